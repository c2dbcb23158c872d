"""Reads of the audit record."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Q, QuerySet

from .models import FEEDBACK, ChatSession, Event, EventType, Summary


def session_get(*, session_id: UUID) -> ChatSession | None:
    """Return the session, or None."""
    return ChatSession.objects.filter(pk=session_id).select_related("summary").first()


@dataclass(frozen=True)
class TurnState:
    """What a turn needs of its session besides the events."""

    user_id: int | None
    anon_key: str
    context_summary: str
    context_summary_seq: int


def session_turn_state(*, session_id: UUID) -> TurnState:
    """Return the session's owner and its rolling context summary."""
    fields = ("user_id", "anon_key", "context_summary", "context_summary_seq")
    return TurnState(*ChatSession.objects.filter(pk=session_id).values_list(*fields).get())


def session_events(*, session_id: UUID, after_seq: int = 0, superseded: bool = True) -> list[Event]:
    """Return the session's events in order, those after `after_seq` (and only those still live unless `superseded`)."""
    events = Event.objects.filter(session_id=session_id, seq__gt=after_seq)
    if not superseded:
        events = events.filter(superseded=False)
    return list(events.order_by("seq"))


def last_user_message(*, session_id: UUID) -> str | None:
    """Return the text of the session's last user message still in the conversation, or None."""
    messages = Event.objects.filter(session_id=session_id, type=EventType.USER_MESSAGE, superseded=False)
    return messages.order_by("-seq").values_list("content", flat=True).first()


def session_history(*, session_id: UUID, before: datetime | None = None) -> list[dict]:
    """Return the user and assistant messages of the session, for the client to show.

    `before`: only those recorded before then (the start of a running turn,
    whose messages reach the client as that turn's frames).
    """
    events = Event.objects.filter(
        session_id=session_id, type__in=[EventType.USER_MESSAGE, EventType.ASSISTANT_MESSAGE], superseded=False
    )
    if before is not None:
        events = events.filter(created_at__lt=before)
    rows = events.order_by("seq").values_list("type", "content", "created_at", "data__turn_id")
    history: list[dict] = []
    for kind, content, created_at, turn_id in rows:
        item: dict[str, Any] = {"role": "user" if kind == EventType.USER_MESSAGE else "assistant"}
        item.update(content=content, created_at=created_at.isoformat())
        if kind == EventType.ASSISTANT_MESSAGE and turn_id:
            item["turn_id"] = turn_id
        history.append(item)
    ratings = feedback_latest(session_id=session_id) if any("turn_id" in item for item in history) else {}
    for item in history:
        if "turn_id" in item:
            item["feedback"] = ratings.get(item["turn_id"])
    return history


def feedback_latest(*, session_id: UUID) -> dict[str, str]:
    """Return the latest rating ("up" or "down") of each rated reply of the session, by turn_id."""
    rows = (
        Event.objects.filter(session_id=session_id, type=EventType.SYSTEM, data__kind=FEEDBACK)
        .order_by("seq")
        .values_list("data__turn_id", "data__rating")
    )
    return dict(rows)


def sessions_owned(*, user_id: int | None, anon_key: str) -> QuerySet[ChatSession]:
    """Return the caller's sessions, newest first (not those they deleted)."""
    sessions = ChatSession.objects.filter(deleted_at__isnull=True).select_related("summary").order_by("-started_at")
    if user_id is not None:
        return sessions.filter(user_id=user_id)
    if anon_key:
        return sessions.filter(user__isnull=True, anon_key=anon_key)
    return sessions.none()


def session_visible(*, session_id: UUID, user_id: int | None, anon_key: str, is_staff: bool) -> ChatSession | None:
    """Return the session when the caller owns it or is staff, else None."""
    if is_staff:
        return session_get(session_id=session_id)
    return sessions_owned(user_id=user_id, anon_key=anon_key).filter(pk=session_id).first()


SNIPPET_CHARS = 200
FULLTEXT_CONFIG = "english"


def _snippet(text: str) -> str:
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def _text_match(fields: list[str], query: str) -> tuple[dict, Q]:
    """Return (annotations, filter) matching `query` in the fields.

    PostgreSQL: full-text search (stemmed, web-search syntax). Elsewhere:
    every word of the query appears in one of the fields.
    """
    if connection.vendor == "postgresql":
        from django.contrib.postgres.search import SearchQuery, SearchVector

        # config="english": the expressions of the full-text indexes (migration 0004).
        vector = SearchVector(*fields, config=FULLTEXT_CONFIG)
        return {"match": vector}, Q(match=SearchQuery(query, config=FULLTEXT_CONFIG, search_type="websearch"))
    condition = Q()
    for word in query.split():
        in_any_field = Q()
        for field in fields:
            in_any_field |= Q(**{f"{field}__icontains": word})
        condition &= in_any_field
    return {}, condition


def sessions_search(
    *, user_id: int | None, anon_key: str, query: str, exclude_session_id: UUID | None, limit: int
) -> list[dict]:
    """Find the caller's own sessions whose summary or messages match `query`, newest first.

    Only the caller's sessions are searched (a user's, or an anonymous
    visitor's); the session asking can be left out.
    """
    owned = sessions_owned(user_id=user_id, anon_key=anon_key)
    if exclude_session_id is not None:
        owned = owned.exclude(pk=exclude_session_id)
    annotations, match = _text_match(["title", "text"], query)
    found = set(
        Summary.objects.filter(session__in=owned)
        .annotate(**annotations)
        .filter(match)
        .values_list("session_id", flat=True)
    )
    annotations, match = _text_match(["content"], query)
    messages = (
        Event.objects.filter(
            session__in=owned, type__in=[EventType.USER_MESSAGE, EventType.ASSISTANT_MESSAGE], superseded=False
        )
        .annotate(**annotations)
        .filter(match)
        .order_by("-created_at")
        .values_list("session_id", "type", "content")[: limit * 20]
    )
    snippets: dict[UUID, list[str]] = {}
    for session_id, kind, content in messages:
        kept = snippets.setdefault(session_id, [])
        if len(kept) < 2:
            kept.append(f"{'user' if kind == EventType.USER_MESSAGE else 'assistant'}: {_snippet(content)}")
    results = []
    for session in owned.filter(pk__in=found | set(snippets)).order_by("-started_at")[:limit]:
        summary = getattr(session, "summary", None)
        results.append(
            {
                "session_id": str(session.id),
                "title": session.title,
                "started_at": session.started_at.isoformat(),
                "summary": _snippet(summary.text) if summary is not None and summary.text else None,
                "matching_messages": snippets.get(session.id, []),
            }
        )
    return results


def sessions_text_match(sessions: QuerySet[ChatSession], term: str) -> QuerySet[ChatSession]:
    """Narrow sessions to those whose messages, summary or title match `term`, for staff search.

    PostgreSQL: full-text search over the indexed message text and summaries
    (web-search syntax: "a phrase", -exclude, or). Elsewhere: words in any of them.
    """
    from django.db.models import Exists, OuterRef

    annotations, match = _text_match(["content"], term)
    messages = Event.objects.filter(session=OuterRef("pk")).annotate(**annotations).filter(match)
    annotations, match = _text_match(["title", "text"], term)
    summaries = Summary.objects.filter(session=OuterRef("pk")).annotate(**annotations).filter(match)
    return sessions.filter(Q(Exists(messages)) | Q(Exists(summaries)) | Q(title__icontains=term))
