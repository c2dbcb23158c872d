"""Write a session's summary with the model, from its recorded events."""

import json
import logging
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from django.conf import settings

from chat.llm import chat_model_get

from . import selectors, services
from .models import Event, EventType

logger = logging.getLogger(__name__)

SENTIMENTS = ("positive", "neutral", "negative", "mixed")

SUMMARY_INSTRUCTIONS = (
    "You summarize chat sessions between a visitor and an assistant for staff who audit them. "
    "Answer with one JSON object and nothing else, with these keys: "
    '"title" (at most 8 words), "text" (2 to 4 sentences), "key_topics" (list of short strings), '
    '"action_items" (list of short strings; empty when there are none), '
    '"sentiment" (one of "positive", "neutral", "negative", "mixed": the visitor\'s mood).'
)


PART_INSTRUCTIONS = (
    "You read one part of a long chat between a visitor and an assistant. Note in at most 80 words what "
    "happened in this part: the visitor's requests, facts, decisions, open questions. "
    'Answer with one JSON object: {"summary": "..."}.'
)
COMBINE_PREFIX = "The conversation was too long to read at once; here are notes on its consecutive parts."


def _part_note(raw: str) -> str:
    """Return the note of one part, or raise SummaryInvalid."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SummaryInvalid(f"part note not JSON: {raw[:200]!r}") from exc
    note = data.get("summary") or data.get("text") if isinstance(data, dict) else None
    if not isinstance(note, str) or not note.strip():
        raise SummaryInvalid(f"no part note in {raw[:200]!r}")
    return note.strip()


class SummaryInvalid(Exception):
    """The model's answer is not a usable summary."""


def transcript_text(events: list[Event]) -> str:
    """Return events as plain transcript lines ("User: ...", "Assistant: ...", "Tool ...")."""
    lines: list[str] = []
    for event in events:
        if event.type == EventType.USER_MESSAGE:
            lines.append(f"User: {event.content}")
        elif event.type == EventType.ASSISTANT_MESSAGE and event.content:
            lines.append(f"Assistant: {event.content}")
        elif event.type == EventType.TOOL_CALL:
            lines.append(f"Tool call {event.data.get('name')}: {json.dumps(event.data.get('arguments'))}")
        elif event.type == EventType.TOOL_RESULT:
            outcome = "ok" if event.data.get("ok") else "failed"
            lines.append(f"Tool result {event.data.get('name')} ({outcome}): {json.dumps(event.data.get('result'))}")
    return "\n".join(lines)


def transcript_build(*, session_id: UUID, through_seq: int) -> str:
    """Return the session's conversation up to `through_seq` as transcript lines."""
    events = [e for e in selectors.session_events(session_id=session_id) if e.seq <= through_seq]
    return transcript_text(events)


def transcript_parts(transcript: str, *, limit: int) -> list[str]:
    """Split a transcript into parts of at most `limit` characters, at line ends where it can."""
    parts: list[str] = []
    current = ""
    for line in transcript.splitlines(keepends=True):
        while len(line) > limit:  # one line longer than a part: cut it
            if current:
                parts.append(current)
                current = ""
            parts.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) > limit:
            parts.append(current)
            current = ""
        current += line
    if current:
        parts.append(current)
    return parts


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(item).strip() for item in value if str(item).strip()][:20]


def summary_parse(raw: str, *, model: str) -> services.SummaryFields:
    """Validate the model's JSON answer into summary fields, or raise SummaryInvalid."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise SummaryInvalid(f"not JSON: {raw[:200]!r}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise SummaryInvalid(f"no summary text in {raw[:200]!r}")
    sentiment = str(data.get("sentiment", "")).strip().lower()
    text = data["text"].strip()
    title = str(data.get("title") or "").strip() or text.split(".")[0]
    return services.SummaryFields(
        title=title[:200],
        text=text,
        key_topics=_strings(data.get("key_topics")),
        action_items=_strings(data.get("action_items")),
        sentiment=sentiment if sentiment in SENTIMENTS else "neutral",
        model=model,
    )


def summary_generate(*, session_id: UUID) -> bool:
    """Write the summary of an ended session; return whether one was stored.

    Idempotent: a session already summarized up to its last event is left
    alone, and a racing writer that finished first wins. Raises LLMError or
    SummaryInvalid for the task to retry.
    """
    covers_seq = services.summary_claim(session_id=session_id)
    if covers_seq is None:
        return False
    transcript = transcript_build(session_id=session_id, through_seq=covers_seq)
    chat_model = chat_model_get()
    model_name = settings.GROQ_SUMMARY_MODEL if chat_model.mode == "groq" else chat_model.model

    def complete(instructions: str, text: str) -> str:
        messages = [{"role": "system", "content": instructions}, {"role": "user", "content": text}]
        return async_to_sync(chat_model.complete_json)(messages=messages, model=model_name)

    limit = settings.CHAT_SUMMARY_PART_CHARS
    if len(transcript) > limit:
        # Too long for one call: summarize consecutive parts, then combine their notes.
        parts = transcript_parts(transcript, limit=limit)
        notes = [_part_note(complete(PART_INSTRUCTIONS, f"Part {n} of {len(parts)}:\n{part}")) for n, part in
                 enumerate(parts, 1)]  # fmt: skip
        transcript = "\n\n".join(f"Part {n}: {note}" for n, note in enumerate(notes, 1))
        transcript = f"{COMBINE_PREFIX}\n\n{transcript}"[:limit]
    raw = complete(SUMMARY_INSTRUCTIONS, transcript)
    fields = summary_parse(raw, model=model_name)
    stored = services.summary_save(session_id=session_id, covers_seq=covers_seq, fields=fields)
    logger.info("summary of session %s %s", session_id, "stored" if stored else "already written")
    return stored
