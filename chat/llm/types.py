"""Plain values the model layer yields, so no other code knows an SDK's shapes."""

import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of reply text, as soon as it arrives."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call the model asked for; `arguments` is the raw JSON text."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage and the provider's timings for one model call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of one model call."""

    reason: str | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Fallback:
    """The main model failed before its reply began (`reason`, an error code): `model` answers instead."""

    model: str
    replaced: str
    reason: str


StreamItem = TextDelta | ToolCall | Usage | Finish | Fallback


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """One whole answer of `complete_json`: its text, the model that wrote it, and its usage.

    `usage` is None when the service sent none (a rejected structured answer,
    a server that does not count): the caller estimates what it cost.
    """

    text: str
    model: str
    usage: Usage | None = None


def retry_after_seconds(header: str | None) -> float | None:
    """Return a Retry-After header's seconds, if it is a usable number (not an HTTP date, NaN or infinity)."""
    try:
        seconds = float(header or "")
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class LLMError(Exception):
    """A model call failed; `code` is the error code sent to the client."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class ChatModel(Protocol):
    """What the chat and the summaries need from a model."""

    mode: str
    model: str
    fast_model: str

    def stream(
        self,
        *,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield the reply as it is produced: text deltas, then tool calls, usage and finish."""
        ...

    async def complete_json(
        self, *, messages: list[dict[str, Any]], model: str | None = None, schema: dict[str, Any] | None = None
    ) -> JsonAnswer:
        """Return the whole reply to `messages` as one JSON object, following the JSON Schema `schema` if given."""
        ...
