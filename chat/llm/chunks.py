"""The chunks of an OpenAI-format chat-completions stream, read into plain stream items.

Groq and every OpenAI-compatible server stream the same shape: SSE events of
JSON chunks whose `choices[0].delta` holds text or tool-call pieces, a
`finish_reason`, and the usage in the last chunk (`x_groq.usage` on Groq,
top-level `usage` elsewhere). The providers differ only in how the request
is sent and how its failures look: both build the request (`request_body`,
`json_format`) and read the response (`response_read`) here.
"""

import asyncio
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from .sse import SSEDecoder, StreamErrorEvent
from .types import Finish, LLMError, StreamItem, TextDelta, ToolCall, Usage


@dataclass
class _PendingCall:
    call_id: str
    name: str
    arguments: str


class ToolCallMerger:
    """Rebuild whole tool calls from streamed deltas.

    Deltas are merged by `index`; a new `id` at an index already in use starts
    a new call. This covers Groq's usual shape (each call whole in one delta),
    several calls in one delta, and arguments split across deltas.
    """

    def __init__(self) -> None:
        self._calls: list[_PendingCall] = []
        self._by_index: dict[int, _PendingCall] = {}

    def add(self, delta: dict[str, Any]) -> None:
        """Fold one entry of a chunk's `delta.tool_calls` into the calls."""
        function = delta.get("function") or {}
        index, call_id = delta.get("index", 0), delta.get("id")
        current = self._by_index.get(index)
        if current is None or (call_id and current.call_id and call_id != current.call_id):
            current = _PendingCall(call_id=call_id or "", name="", arguments="")
            self._calls.append(current)
            self._by_index[index] = current
        elif call_id and not current.call_id:
            current.call_id = call_id
        if function.get("name") and not current.name:
            current.name = function["name"]
        if function.get("arguments"):
            current.arguments += function["arguments"]

    def calls(self) -> list[ToolCall]:
        """Return the merged calls in the order they started."""
        return [
            ToolCall(call_id=call.call_id or f"call_{n}", name=call.name, arguments=call.arguments or "{}")
            for n, call in enumerate(self._calls)
        ]


def _token_count(value: Any) -> int:
    """Return a usage object's token count; what is not a count (a string, a negative, NaN) is 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0
    return int(value)


def usage_from(raw: dict[str, Any]) -> Usage:
    """Return the token usage (and Groq's timings, when given) of a usage object."""
    timings = {
        name: float(value)
        for name in ("queue_time", "prompt_time", "completion_time", "total_time")
        if isinstance(value := raw.get(name), int | float) and math.isfinite(value)
    }
    return Usage(
        prompt_tokens=_token_count(raw.get("prompt_tokens")),
        completion_tokens=_token_count(raw.get("completion_tokens")),
        timings=timings,
    )


async def chunks_read(
    reads: AsyncIterator[bytes], *, first_deadline: float, token_timeout: float
) -> AsyncGenerator[StreamItem, None]:
    """Yield text deltas as they arrive from the body's reads, then the merged tool calls, the usage and finish.

    The usage is yielded only when the server sent it (a server that ignores
    `stream_options.include_usage` sends none): the caller then estimates.

    Until the first text or tool call the reads may take until `first_deadline`
    (the loop's clock, counted from the request); after it, `token_timeout`
    between two reads. Either overrun is `llm_unavailable`, as is an error
    event mid-stream, a chunk that is not JSON, or a body cut short. Transport
    errors of `reads` pass through for the provider to map.
    """
    loop = asyncio.get_running_loop()
    merger = ToolCallMerger()
    usage: Usage | None = None
    finish_reason: str | None = None
    request_id: str | None = None
    decoder = SSEDecoder()
    answered = False
    try:
        while not decoder.done:
            wait = token_timeout if answered else max(0.0, first_deadline - loop.time())
            last = False
            try:
                async with asyncio.timeout(wait):
                    data = await anext(reads)
            except StopAsyncIteration:
                data, last = b"", True
            except TimeoutError:
                what = "the next token" if answered else "the first token"
                raise LLMError("llm_unavailable", f"The model service took too long to send {what}.") from None
            for chunk in decoder.feed(data, last=last):
                x_groq = chunk.get("x_groq")
                if isinstance(x_groq, dict):
                    request_id = x_groq.get("id") or request_id
                    if isinstance(x_groq.get("usage"), dict):
                        usage = usage_from(x_groq["usage"])
                elif isinstance(chunk.get("usage"), dict):
                    usage = usage_from(chunk["usage"])
                    request_id = request_id or chunk.get("id")
                choices = chunk.get("choices")
                if not choices:
                    continue
                choice = choices[0]
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    answered = True
                    yield TextDelta(delta["content"])
                for call_delta in delta.get("tool_calls") or ():
                    answered = True
                    merger.add(call_delta)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
            if last:
                break
        if not finish_reason:
            # A body that ended without [DONE] was cut short, unless the reply was
            # whole (it has its finish reason): then only the end marker is missing.
            decoder.end()
    except (StreamErrorEvent, ValueError) as exc:
        # An error event mid-stream, or a chunk that is not JSON.
        raise LLMError("llm_unavailable", "The model service failed mid-reply.") from exc
    for call in merger.calls():
        yield call
    if usage is not None:
        yield usage
    yield Finish(reason=finish_reason, request_id=request_id)


def request_body(
    *,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    temperature: float | None,
    max_tokens: int | None,
) -> dict[str, Any]:
    """Return the body of a streaming chat-completions request (options left out when not set)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if tools:
        body["tools"] = tools
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def json_format(schema: dict[str, Any] | None) -> dict[str, Any]:
    """Return the `response_format` of a JSON answer: JSON mode, or structured outputs shaped by `schema`.

    Best effort (strict false): strict mode is on fewer models, and the caller validates every answer anyway.
    """
    if schema is None:
        return {"type": "json_object"}
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "answer"))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}


async def response_read(
    open_response: Callable[[], Awaitable[httpx.Response]],
    *,
    first_token_timeout: float,
    token_timeout: float,
    failures: tuple[type[Exception], ...],
    failure: Callable[[Any], LLMError],
) -> AsyncGenerator[StreamItem, None]:
    """Open the streaming response and yield its items (see `chunks_read`); closing this closes the response.

    The first-token budget also covers the wait for the response to start.
    A provider's own failures (`failures`: its SDK's and httpx's errors) are
    raised as the LLMError `failure` makes of them.
    """
    first_deadline = asyncio.get_running_loop().time() + first_token_timeout
    try:
        try:
            async with asyncio.timeout_at(first_deadline):
                response = await open_response()
        except TimeoutError:
            raise LLMError("llm_unavailable", "The model service took too long to send the first token.") from None
        reads = aiter(response.aiter_bytes())
        try:
            async with aclosing(
                chunks_read(reads, first_deadline=first_deadline, token_timeout=token_timeout)
            ) as items:
                async for item in items:
                    yield item
        finally:
            await response.aclose()
    except failures as exc:
        raise failure(exc) from exc
