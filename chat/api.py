"""The JSON API: the caller's sessions, and one session with its events."""

from uuid import UUID

from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from audit import selectors
from audit.exports import event_as_json, session_as_json

SESSIONS_PAGE_SIZE = 100


def _caller(request: HttpRequest) -> tuple[int | None, str]:
    if request.user.is_authenticated:
        return request.user.pk, ""
    return None, request.session.session_key or ""


@require_GET
def sessions_list(request: HttpRequest) -> JsonResponse:
    """List the caller's sessions, newest first (at most SESSIONS_PAGE_SIZE)."""
    user_id, anon_key = _caller(request)
    sessions = selectors.sessions_owned(user_id=user_id, anon_key=anon_key)[:SESSIONS_PAGE_SIZE]
    return JsonResponse({"sessions": [session_as_json(session) for session in sessions]})


@require_GET
def session_detail(request: HttpRequest, session_id: UUID) -> JsonResponse:
    """Show one session with its ordered events and summary, to its owner or staff; 404 to anyone else."""
    user_id, anon_key = _caller(request)
    session = selectors.session_visible(
        session_id=session_id, user_id=user_id, anon_key=anon_key, is_staff=request.user.is_staff
    )
    if session is None:
        raise Http404("No such session.")
    body = session_as_json(session)
    body["events"] = [event_as_json(event) for event in selectors.session_events(session_id=session_id)]
    return JsonResponse(body)
