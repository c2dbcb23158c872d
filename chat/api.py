"""The JSON API: the caller's sessions, and one session with its events; its owner renames or deletes it."""

import json
from typing import Any
from uuid import UUID

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods

from audit import selectors, services
from audit.exports import event_as_json, session_as_json

from .protocol import FrameError, text_check

SESSIONS_PAGE_SIZE = 100
TITLE_MAX_CHARS = 200


def _caller(request: HttpRequest) -> tuple[int | None, str]:
    if request.user.is_authenticated:
        return request.user.pk, ""
    return None, request.session.session_key or ""


def _refused(code: str, message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@require_GET
def sessions_list(request: HttpRequest) -> JsonResponse:
    """List the caller's sessions with at least one message, newest first (at most SESSIONS_PAGE_SIZE)."""
    user_id, anon_key = _caller(request)
    owned = selectors.sessions_owned(user_id=user_id, anon_key=anon_key).filter(message_count__gt=0)
    return JsonResponse({"sessions": [session_as_json(session) for session in owned[:SESSIONS_PAGE_SIZE]]})


@require_http_methods(["GET", "PATCH", "DELETE"])
def session_detail(request: HttpRequest, session_id: UUID) -> HttpResponse:
    """GET: one session with its events and summary, to its owner or staff (404 to anyone else).

    PATCH `{"title": "..."}` renames it and DELETE deletes it, for its owner
    only; a deleted session is gone from the owner's list and reach, and kept
    in the admin for staff.
    """
    user_id, anon_key = _caller(request)
    if request.method == "GET":
        session = selectors.session_visible(
            session_id=session_id, user_id=user_id, anon_key=anon_key, is_staff=request.user.is_staff
        )
        if session is None:
            raise Http404("No such session.")
        body = session_as_json(session)
        body["events"] = [event_as_json(event) for event in selectors.session_events(session_id=session_id)]
        return JsonResponse(body)
    if not selectors.sessions_owned(user_id=user_id, anon_key=anon_key).filter(pk=session_id).exists():
        raise Http404("No such session.")
    if request.method == "DELETE":
        services.session_delete_by_owner(session_id=session_id)
        return HttpResponse(status=204)
    title = _title_parse(request.body)
    if isinstance(title, JsonResponse):
        return title
    services.session_rename(session_id=session_id, title=title)
    renamed = selectors.session_get(session_id=session_id)
    if renamed is None:
        raise Http404("No such session.")
    return JsonResponse(session_as_json(renamed))


def _title_parse(body: bytes) -> str | JsonResponse:
    """Return the title of a rename request, or the 400 answer saying what is wrong with it."""
    try:
        payload: Any = json.loads(body or b"null")
    except (ValueError, RecursionError):
        return _refused("invalid_json", "The body is not valid JSON.")
    title = payload.get("title") if isinstance(payload, dict) else None
    if not isinstance(title, str) or not title.strip():
        return _refused("invalid_title", 'Send {"title": "..."} with a non-empty title.')
    title = " ".join(title.split())
    if len(title) > TITLE_MAX_CHARS:
        return _refused("invalid_title", f"A title has at most {TITLE_MAX_CHARS} characters.")
    try:
        text_check(title)
    except FrameError as exc:
        return _refused("invalid_title", exc.message)
    return title
