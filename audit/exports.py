"""Sessions as JSON-ready dicts (the API and the exports share them), and streamed JSON and CSV exports."""

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any
from uuid import UUID

from .models import ChatSession, Event, Summary, SummaryStatus
from .redaction import visitor_label

EXPORT_BATCH = 100
CSV_COLUMNS = [
    "session_id",
    "session_started_at",
    "owner",
    "session_status",
    "seq",
    "type",
    "created_at",
    "content",
    "data",
]


def summary_as_json(session: ChatSession) -> dict[str, Any] | None:
    """Return the session's written summary, or None."""
    try:
        summary: Summary = session.summary
    except Summary.DoesNotExist:
        return None
    if summary.status != SummaryStatus.DONE:
        return None
    return {
        "text": summary.text,
        "title": summary.title,
        "key_topics": summary.key_topics,
        "action_items": summary.action_items,
        "sentiment": summary.sentiment,
        "model": summary.model,
        "created_at": summary.updated_at.isoformat(),
    }


def session_as_json(session: ChatSession) -> dict[str, Any]:
    """Return a session as the API and the exports show it (without its events)."""
    return {
        "id": str(session.id),
        "status": session.status,
        "title": session.title,
        "model": session.model,
        "started_at": session.started_at.isoformat(),
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "duration_seconds": session.duration_seconds,
        "turns": session.turn_count,
        "summary": summary_as_json(session),
    }


def event_as_json(event: Event) -> dict[str, Any]:
    """Return an event as the API and the exports show it."""
    return {
        "seq": event.seq,
        "type": event.type,
        "content": event.content,
        "data": event.data,
        "created_at": event.created_at.isoformat(),
        "superseded": event.superseded,
    }


def _batches(session_ids: list[UUID]) -> Iterator[tuple[ChatSession, list[Event]]]:
    """Yield each session with its ordered events, a batch of sessions per two queries."""
    for start in range(0, len(session_ids), EXPORT_BATCH):
        batch = session_ids[start : start + EXPORT_BATCH]
        sessions = ChatSession.objects.filter(pk__in=batch).select_related("summary", "user").order_by("started_at")
        events: dict[UUID, list[Event]] = {}
        for event in Event.objects.filter(session_id__in=batch).order_by("session_id", "seq").iterator():
            events.setdefault(event.session_id, []).append(event)
        for session in sessions:
            yield session, events.get(session.id, [])


def sessions_json_stream(session_ids: Iterable[UUID]) -> Iterator[str]:
    """Yield a JSON array of the sessions with their events, piece by piece."""
    yield "["
    for n, (session, events) in enumerate(_batches(list(session_ids))):
        record = session_as_json(session)
        record["owner"] = _owner(session)
        record["events"] = [event_as_json(event) for event in events]
        yield ("," if n else "") + json.dumps(record)
    yield "]\n"


class _Line:
    """A file-like object whose write returns the line, for csv.writer in a generator."""

    def write(self, value: str) -> str:
        return value


def sessions_csv_stream(session_ids: Iterable[UUID]) -> Iterator[str]:
    """Yield CSV lines: one row per event of the sessions."""
    writer = csv.writer(_Line())
    yield writer.writerow(CSV_COLUMNS)
    for session, events in _batches(list(session_ids)):
        for event in events:
            yield writer.writerow(
                [
                    str(session.id),
                    session.started_at.isoformat(),
                    _owner(session),
                    session.status,
                    event.seq,
                    event.type,
                    event.created_at.isoformat(),
                    event.content,
                    json.dumps(event.data),
                ]
            )


def _owner(session: ChatSession) -> str:
    username = session.user.get_username() if session.user is not None else None
    return visitor_label(username=username, anon_key=session.anon_key)
