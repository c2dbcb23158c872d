"""Write a session's summary with the model, from its recorded events.

Every answer of the model is read leniently, then validated with pydantic:
the JSON object may stand alone, sit in a ```json fence or in prose; keys may
use common synonyms ("summary" for "text", "topics" for "key_topics"...); a
string where a list belongs is split into items; an unknown sentiment is
"neutral". An answer still unusable is asked for once more, with what was
wrong, before SummaryInvalid tells the task to retry later.

What was wrong is said in the error, the logs and the re-ask without quoting
the model's text: that text retells the visitor's conversation, and the
error ends up in `Summary.error` (shown in the admin) and in WARNING logs.
The error gives the offending keys, pydantic's reason (its messages carry no
input) and the answer's length, which is enough to tell what went wrong.
"""

import json
import logging
import re
from typing import Any, ClassVar, Literal, TypeVar
from uuid import UUID

from asgiref.sync import async_to_sync
from django.conf import settings
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chat.context import answer_usage
from chat.llm import ChatModel, chat_model_get

from . import metrics, selectors, services
from .costs import Spend
from .models import Event, EventType

logger = logging.getLogger(__name__)

SENTIMENTS = ("positive", "neutral", "negative", "mixed")
LIST_MAX_ITEMS = 20
TITLE_MAX_CHARS = 200
# How much of an unusable answer goes back to the model with the re-ask.
REASK_ANSWER_MAX_CHARS = 4000
# Objects tried in an answer that is not JSON as a whole (prose around it, a fence).
OBJECT_CANDIDATES_MAX = 50

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
REASK_INSTRUCTIONS = (
    "That answer could not be used: {problem}. Answer again with only the JSON object described above, "
    "with exactly the keys asked for."
)


class SummaryInvalid(Exception):
    """The model's answer is not a usable summary."""


_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+")


def _key_normalize(key: Any) -> str:
    """Return a key in snake case: "Key Topics", "keyTopics" and "key-topics" become "key_topics"."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(key).strip())
    return re.sub(r"[\s-]+", "_", spaced).lower()


def _text_join(value: Any) -> Any:
    """Join a text given as a list of sentences; leave anything else for pydantic to judge."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return " ".join(item.strip() for item in value)
    return value


def _items(value: Any, *, commas: bool = False) -> Any:
    """Return a list answer as clean strings, at most LIST_MAX_ITEMS; leave a wrong type for pydantic to report.

    A string is split at line ends, semicolons and bullets (and at commas when
    `commas` and nothing else splits it); bullets and numbering are dropped, as
    are blank items. A dict item ({"task": ..., "owner": ...}) counts as its first text.
    """
    if value is None:
        return []
    if isinstance(value, str):
        if value.lstrip().startswith("["):  # a JSON list sent as a string
            try:
                value = json.loads(value)
            except ValueError:
                pass
    if isinstance(value, str):
        pieces = re.split(r"[\n;•]", value)
        value = value.split(",") if commas and len(pieces) == 1 else pieces
    if not isinstance(value, list):
        return value
    items: list[str] = []
    for item in value:
        if isinstance(item, dict):
            item = next((inner for inner in item.values() if isinstance(inner, str)), "")
        if isinstance(item, str | int | float) and not isinstance(item, bool):
            text = _BULLET.sub("", str(item)).strip()
            if text:
                items.append(text)
    return items[:LIST_MAX_ITEMS]


class ModelAnswer(BaseModel):
    """A JSON answer of the model: keys normalized, one wrapping object ({"summary": {...}}) unwrapped."""

    model_config = ConfigDict(str_strip_whitespace=True)
    label: ClassVar[str] = "answer"

    @model_validator(mode="before")
    @classmethod
    def _keys_normalize(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {_key_normalize(key): value for key, value in data.items()}
        if len(data) == 1 and isinstance(inner := next(iter(data.values())), dict):
            return {_key_normalize(key): value for key, value in inner.items()}
        return data


class SummaryAnswer(ModelAnswer):
    """The summary of a whole session, as the model writes it."""

    label: ClassVar[str] = "summary"

    title: str = Field(
        default="",
        validation_alias=AliasChoices("title", "name", "headline"),
        description="At most 8 words.",
    )
    text: str = Field(
        min_length=1,
        validation_alias=AliasChoices("text", "summary", "summary_text", "description"),
        description="2 to 4 sentences.",
    )
    key_topics: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("key_topics", "topics", "keywords"),
        description="Short strings.",
    )
    action_items: list[str] = Field(
        default_factory=list,
        validation_alias=AliasChoices("action_items", "actions", "todos", "next_steps"),
        description="Short strings; empty when there are none.",
    )
    sentiment: Literal["positive", "neutral", "negative", "mixed"] = Field(
        default="neutral",
        validation_alias=AliasChoices("sentiment", "mood"),
        description="The visitor's mood.",
    )

    @field_validator("title", mode="before")
    @classmethod
    def _title_text(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("text", mode="before")
    @classmethod
    def _text_join(cls, value: Any) -> Any:
        return _text_join(value)

    @field_validator("key_topics", mode="before")
    @classmethod
    def _topics_split(cls, value: Any) -> Any:
        return _items(value, commas=True)  # topics are short: "billing, refunds" is two

    @field_validator("action_items", mode="before")
    @classmethod
    def _actions_split(cls, value: Any) -> Any:
        return _items(value)  # an action item may hold a comma

    @field_validator("sentiment", mode="before")
    @classmethod
    def _sentiment_known(cls, value: Any) -> str:
        word = value.strip().strip(".!").lower() if isinstance(value, str) else ""
        return word if word in SENTIMENTS else "neutral"

    @model_validator(mode="after")
    def _title_fill(self) -> "SummaryAnswer":
        # Without a title, the first sentence names the session.
        self.title = (self.title or self.text.split(".")[0].strip())[:TITLE_MAX_CHARS]
        return self


class PartNoteAnswer(ModelAnswer):
    """The note on one part of a long session."""

    label: ClassVar[str] = "part note"

    summary: str = Field(
        min_length=1,
        validation_alias=AliasChoices("summary", "text", "note", "notes", "content"),
        description="At most 80 words.",
    )

    @field_validator("summary", mode="before")
    @classmethod
    def _text_join(cls, value: Any) -> Any:
        return _text_join(value)


Answer = TypeVar("Answer", bound=ModelAnswer)


def answer_schema(*, shape: type[ModelAnswer]) -> dict[str, Any]:
    """Return the JSON Schema the model is asked to follow: every key required, no other key."""
    schema = shape.model_json_schema(mode="serialization")
    for field in schema["properties"].values():
        field.pop("default", None)
    # What Groq's strict mode demands; best-effort mode takes it as well.
    schema["required"] = list(schema["properties"])
    schema["additionalProperties"] = False
    return schema


def json_object_find(raw: str) -> dict[str, Any] | None:
    """Return the JSON object in an answer: the answer itself, else the first object in it (fenced, in prose)."""
    decoder = json.JSONDecoder(strict=False)  # models put raw line breaks inside strings
    try:
        data = decoder.decode(raw.strip())
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    if isinstance(data, str):  # the object sent as a JSON string
        return json_object_find(data)
    starts = [match.start() for match in re.finditer(r"\{", raw)][:OBJECT_CANDIDATES_MAX]
    for start in starts:
        try:
            data, _ = decoder.raw_decode(raw, start)
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    return None


def _problems(exc: ValidationError, *, shape: type[ModelAnswer]) -> str:
    """Say what did not fit, by the keys asked for, without the answer's values."""
    names = {
        alias: name
        for name, field in shape.model_fields.items()
        for alias in getattr(field.validation_alias, "choices", [name])
    }
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:3]:
        loc = error["loc"]
        where = ".".join(str(part) for part in (names.get(loc[0], loc[0]), *loc[1:])) if loc else ""
        problems.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(problems)


def answer_parse(raw: str, *, shape: type[Answer]) -> Answer:
    """Validate a model's answer into `shape`, or raise SummaryInvalid saying what was wrong (never quoting it)."""
    if not raw.strip():
        raise SummaryInvalid(f"the {shape.label} answer was empty")
    data = json_object_find(raw)
    if data is None:
        raise SummaryInvalid(f"the {shape.label} answer held no JSON object ({len(raw)} characters)")
    try:
        return shape.model_validate(data)
    except ValidationError as exc:
        # Not chained: pydantic's own message quotes the values, that is the model's text.
        raise SummaryInvalid(f"the {shape.label} answer did not fit: {_problems(exc, shape=shape)}") from None


def answer_ask(
    *,
    chat_model: ChatModel,
    model: str,
    structured: bool,
    instructions: str,
    text: str,
    shape: type[Answer],
    spend: Spend,
) -> Answer:
    """Ask the model for an answer of `shape`; when it is unusable, ask once more saying why, then raise SummaryInvalid.

    `structured`: the model takes Groq's structured outputs, so the request
    carries the answer's JSON Schema; otherwise it asks for JSON mode. Each
    answer's tokens are noted in `spend` (estimated when the service sent no usage).
    """
    schema = answer_schema(shape=shape) if structured else None
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}, {"role": "user", "content": text}]

    def complete() -> str:
        answer = async_to_sync(chat_model.complete_json)(messages=messages, model=model, schema=schema)
        usage, estimated = answer_usage(answer, messages=messages)
        spend.add(
            model=answer.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            estimated=estimated,
        )
        return answer.text

    raw = complete()
    try:
        return answer_parse(raw, shape=shape)
    except SummaryInvalid as exc:
        problem = str(exc)
    logger.info("%s; asking the model again", problem)
    if raw.strip():
        messages.append({"role": "assistant", "content": raw[:REASK_ANSWER_MAX_CHARS]})
    messages.append({"role": "user", "content": REASK_INSTRUCTIONS.format(problem=problem)})
    raw = complete()
    try:
        return answer_parse(raw, shape=shape)
    except SummaryInvalid as exc:
        raise SummaryInvalid(f"{problem}; after a re-ask, {exc}") from None


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
    # What the conversation became: replies regenerated and messages edited count as replaced.
    events = [e for e in selectors.session_events(session_id=session_id, superseded=False) if e.seq <= through_seq]
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


def summary_fields(answer: SummaryAnswer, *, model: str) -> services.SummaryFields:
    """Return the fields to store from a validated summary answer."""
    return services.SummaryFields(
        title=answer.title,
        text=answer.text,
        key_topics=answer.key_topics,
        action_items=answer.action_items,
        sentiment=answer.sentiment,
        model=model,
    )


def summary_parse(raw: str, *, model: str) -> services.SummaryFields:
    """Validate the model's JSON answer into summary fields, or raise SummaryInvalid."""
    return summary_fields(answer_parse(raw, shape=SummaryAnswer), model=model)


def summary_generate(*, session_id: UUID) -> bool:
    """Write the summary of an ended session; return whether one was stored.

    Idempotent: a session already summarized up to its last event is left
    alone, and a racing writer that finished first wins. Raises LLMError or
    SummaryInvalid for the task to retry. What the model calls used is added
    to the summary's tokens and cost whether or not a summary came of them.
    """
    covers_seq = services.summary_claim(session_id=session_id)
    if covers_seq is None:
        return False
    spend = Spend()
    try:
        return _summary_write(session_id=session_id, covers_seq=covers_seq, spend=spend)
    finally:
        # Never in the way of the outcome (a retry, a stored summary), whatever fails here.
        try:
            if spend.charges:
                metrics.summary_spent(tokens_by_model=spend.counted_by_model(), cost_by_model=spend.cost_by_model()[0])
                services.summary_spend_add(session_id=session_id, spend=spend)
        except Exception:
            logger.exception("could not record what the summary of session %s cost", session_id)


def _summary_write(*, session_id: UUID, covers_seq: int, spend: Spend) -> bool:
    transcript = transcript_build(session_id=session_id, through_seq=covers_seq)
    chat_model = chat_model_get()
    on_groq = chat_model.mode == "groq"
    model_name = settings.GROQ_SUMMARY_MODEL if on_groq else chat_model.model
    structured = on_groq and model_name in settings.GROQ_STRUCTURED_OUTPUT_MODELS

    def ask(shape: type[Answer], instructions: str, text: str) -> Answer:
        return answer_ask(
            chat_model=chat_model,
            model=model_name,
            structured=structured,
            instructions=instructions,
            text=text,
            shape=shape,
            spend=spend,
        )

    limit = settings.CHAT_SUMMARY_PART_CHARS
    if len(transcript) > limit:
        # Too long for one call: summarize consecutive parts, then combine their notes.
        parts = transcript_parts(transcript, limit=limit)
        notes = [
            ask(PartNoteAnswer, PART_INSTRUCTIONS, f"Part {n} of {len(parts)}:\n{part}").summary
            for n, part in enumerate(parts, 1)
        ]
        transcript = "\n\n".join(f"Part {n}: {note}" for n, note in enumerate(notes, 1))
        transcript = f"{COMBINE_PREFIX}\n\n{transcript}"[:limit]
    answer = ask(SummaryAnswer, SUMMARY_INSTRUCTIONS, transcript)
    # After a fallback (chat.llm.fallback) the spare wrote it.
    fields = summary_fields(answer, model=spend.last_model or model_name)
    stored = services.summary_save(session_id=session_id, covers_seq=covers_seq, fields=fields)
    logger.info("summary of session %s %s", session_id, "stored" if stored else "already written")
    return stored
