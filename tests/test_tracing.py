"""OpenTelemetry spans of model and tool calls (GenAI conventions), read from the SDK's in-memory exporter."""

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from chat.tracing import tracing_start

from .conftest import REPO, ChatClient, subprocess_env
from .fake_groq import status_reply, text_reply

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """The process's tracer provider, set once, keeping finished spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    span_exporter.clear()
    yield span_exporter
    span_exporter.clear()


def named(spans: InMemorySpanExporter, prefix: str) -> list:
    return [span for span in spans.get_finished_spans() if span.name.startswith(prefix)]


@pytest.mark.asyncio
async def test_a_turn_with_a_tool_call_has_a_span_per_model_call_and_per_tool(avisitor, fake_groq, spans):
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("what time is it?")
    await client.close()
    done = frames[-1]
    model_calls = named(spans, "chat ")
    assert [span.name for span in model_calls] == [f"chat {done['model']}"] * 2
    first, second = (dict(span.attributes) for span in model_calls)
    for attributes in (first, second):
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "groq"
        assert attributes["gen_ai.request.model"] == done["model"]
        assert attributes["gen_ai.conversation.id"] == str(client.session_id)
        assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes
    # The fake server's tool-call round uses 20 + 9 tokens, its answer 12 + 7.
    assert (first["gen_ai.response.finish_reasons"], second["gen_ai.response.finish_reasons"]) == (
        ("tool_calls",),
        ("stop",),
    )
    assert (first["gen_ai.usage.input_tokens"], first["gen_ai.usage.output_tokens"]) == (20, 9)
    assert (second["gen_ai.usage.input_tokens"], second["gen_ai.usage.output_tokens"]) == (12, 7)
    [tool] = named(spans, "execute_tool ")
    assert tool.name == "execute_tool current_time"
    assert tool.attributes["gen_ai.tool.name"] == "current_time"
    assert tool.attributes["gen_ai.tool.call.id"] == next(f["call_id"] for f in frames if f["type"] == "tool_call")
    assert tool.attributes["gen_ai.conversation.id"] == str(client.session_id)
    assert "gen_ai.tool.call.arguments" not in tool.attributes
    assert tool.status.status_code != StatusCode.ERROR
    # The tool ran inside the turn, between the two model calls.
    assert model_calls[0].end_time <= tool.start_time and tool.end_time <= model_calls[1].start_time


@pytest.mark.asyncio
async def test_message_content_is_on_the_spans_only_when_allowed(avisitor, fake_groq, spans, settings):
    settings.TRACE_MESSAGE_CONTENT = True
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("what time is it?")
    await client.close()
    first, second = named(spans, "chat ")
    assert "what time is it?" in first.attributes["gen_ai.input.messages"]
    assert '"type": "tool_call"' in first.attributes["gen_ai.output.messages"]
    assert "The tool said" in second.attributes["gen_ai.output.messages"]
    [tool] = named(spans, "execute_tool ")
    assert tool.attributes["gen_ai.tool.call.arguments"] == '{"timezone": "UTC"}'
    assert "UTC" in tool.attributes["gen_ai.tool.call.result"]


@pytest.mark.asyncio
async def test_a_failed_model_call_is_an_error_span_and_a_stopped_one_is_not(avisitor, fake_groq, spans, settings):
    settings.GROQ_MAX_RETRIES = 0
    fake_groq.enqueue(status_reply(503), text_reply(" ".join(f"w{n}" for n in range(200)), delay=0.05))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hello")
    await client.send({"type": "message", "content": "talk slowly"})
    while (await client.receive())["type"] != "token":
        pass
    await client.send({"type": "stop"})
    await client.until("done")
    await client.close()
    failed, stopped = named(spans, "chat ")
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "llm_unavailable"
    assert stopped.status.status_code != StatusCode.ERROR
    assert stopped.attributes["llmbacker.cancelled"] is True


def test_without_an_otlp_endpoint_tracing_stays_off(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing_start() is False


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_with_an_otlp_endpoint_a_process_exports_its_spans_to_the_collector():
    """A process started with OTEL_EXPORTER_OTLP_ENDPOINT sends its spans there over OTLP/HTTP."""
    collector = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    _Collector.received.clear()
    program = (
        "import django, uuid; django.setup()\n"
        "from opentelemetry import trace\n"
        "from chat.tracing import model_call_span\n"
        "with model_call_span(mode='offline', model='offline-demo', session_id=uuid.uuid4(), messages=[],"
        " temperature=None):\n"
        "    pass\n"
        "trace.get_tracer_provider().shutdown()\n"
    )
    env = subprocess_env(groq_url=None, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_port}")
    try:
        ran = subprocess.run([sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, timeout=60)
    finally:
        collector.shutdown()
        collector.server_close()
    assert ran.returncode == 0, ran.stderr.decode()
    assert [path for path, _ in _Collector.received] == ["/v1/traces"]
    body = _Collector.received[0][1]
    assert b"chat offline-demo" in body and b"llmbacker" in body and b"gen_ai.provider.name" in body
