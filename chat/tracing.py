"""OpenTelemetry spans of the model calls and tool calls, after the GenAI semantic conventions.

A `chat {model}` span per model call (one per tool round) and an
`execute_tool {name}` span per tool call, each with the session id as
`gen_ai.conversation.id`. Message text, tool arguments and results go on the
spans only when TRACE_MESSAGE_CONTENT is on. Tracing is off unless
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set:
then `tracing_start` installs the SDK's tracer provider, exporting in batches
over OTLP/HTTP (the exporter reads the OTEL_* variables itself). Off, the
API's no-op tracer costs next to nothing per span.
"""

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from django.conf import settings
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

TRACER_NAME = "llmbacker"
# gen_ai.provider.name by the chat model's mode.
PROVIDERS = {"groq": "groq", "openai": "openai", "offline": "llmbacker.offline"}


def tracing_start() -> bool:
    """Install an OTLP-exporting tracer provider when an OTLP endpoint is set; return whether it did."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "llmbacker"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def _parts(message: dict[str, Any]) -> dict[str, Any]:
    """One chat message in the conventions' shape: a role and its parts."""
    parts: list[dict[str, Any]] = []
    if message.get("role") == "tool":
        parts.append({"type": "tool_call_response", "id": message.get("tool_call_id"), "response": message["content"]})
    elif message.get("content"):
        parts.append({"type": "text", "content": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": function.get("name"),
                "arguments": function.get("arguments"),
            }
        )
    return {"role": message.get("role"), "parts": parts}


@contextmanager
def model_call_span(
    *, mode: str, model: str, session_id: UUID, messages: list[dict[str, Any]], temperature: float | None
) -> Iterator[Span]:
    """Open the `chat {model}` span of one model call.

    An exception ends it as an error, with the client's error code as
    `error.type` (an LLMError's `code`); a cancel (a stop, a client gone) is
    not an error: the span says `llmbacker.cancelled`.
    """
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDERS.get(mode, mode),
        "gen_ai.request.model": model,
        "gen_ai.conversation.id": str(session_id),
    }
    if temperature is not None:
        attributes["gen_ai.request.temperature"] = temperature
    if settings.TRACE_MESSAGE_CONTENT:
        attributes["gen_ai.input.messages"] = json.dumps([_parts(message) for message in messages], default=str)
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except asyncio.CancelledError:
            span.set_attribute("llmbacker.cancelled", True)
            raise
        except Exception as exc:
            code = getattr(exc, "code", None)
            span.set_attribute("error.type", code if isinstance(code, str) else type(exc).__qualname__)
            span.set_status(StatusCode.ERROR, str(exc)[:200])
            raise


def model_call_end(
    span: Span,
    *,
    finish_reason: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    text: str,
    calls: list[Any],
    answered_by: str,
) -> None:
    """Put what the call returned on its span."""
    if not span.is_recording():
        return
    span.set_attribute("gen_ai.response.model", answered_by)
    if finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if settings.TRACE_MESSAGE_CONTENT:
        parts: list[dict[str, Any]] = [{"type": "text", "content": text}] if text else []
        parts += [{"type": "tool_call", "id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls]
        output = [{"role": "assistant", "parts": parts, "finish_reason": finish_reason}]
        span.set_attribute("gen_ai.output.messages", json.dumps(output))


@contextmanager
def tool_span(*, name: str, call_id: str, session_id: UUID, arguments: str) -> Iterator[Span]:
    """Open the `execute_tool {name}` span of one tool call."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
        "gen_ai.conversation.id": str(session_id),
    }
    if settings.TRACE_MESSAGE_CONTENT:
        attributes["gen_ai.tool.call.arguments"] = arguments
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes) as span:
        yield span


def tool_end(span: Span, *, ok: bool, result: Any) -> None:
    """Put the tool's outcome on its span."""
    if not span.is_recording():
        return
    if settings.TRACE_MESSAGE_CONTENT:
        span.set_attribute("gen_ai.tool.call.result", json.dumps(result, default=str))
    if not ok:
        span.set_attribute("error.type", "tool_error")
        span.set_status(StatusCode.ERROR, "the tool failed")
