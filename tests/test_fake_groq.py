"""The fake Groq server speaks the wire format the real groq SDK parses (no Django needed)."""

import json
from collections.abc import AsyncIterator
from typing import Any

import groq
import httpx
import pytest
import pytest_asyncio
from groq.types.chat import ChatCompletion, ChatCompletionChunk

from .fake_groq import (
    FakeGroq,
    cut_reply,
    error_event_reply,
    json_reply,
    status_reply,
    text_reply,
    tool_calls_reply,
)

MODEL = "llama-3.3-70b-versatile"
CLOCK_TOOL = {
    "type": "function",
    "function": {
        "name": "current_time",
        "description": "The current time in a timezone.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    },
}
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("call_a", "current_time", {"timezone": "Europe/Paris"}),
    ("call_b", "lookup", {"query": "fake servers", "limit": 3}),
]


@pytest.fixture
def fake(fake_groq_server: FakeGroq) -> FakeGroq:
    fake_groq_server.reset()
    return fake_groq_server


@pytest_asyncio.fixture
async def client(fake: FakeGroq) -> AsyncIterator[groq.AsyncGroq]:
    async with groq.AsyncGroq(api_key="test", base_url=fake.url, max_retries=0) as sdk:
        yield sdk


async def stream_chunks(client: groq.AsyncGroq, content: str = "hi", **options: Any) -> list[ChatCompletionChunk]:
    """Send one streamed request and collect every chunk."""
    messages = options.pop("messages", [{"role": "user", "content": content}])
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True, **options)
    return [chunk async for chunk in stream]


def texts(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]


def tool_deltas(chunks: list[ChatCompletionChunk]) -> list[list[Any]]:
    """Return the tool_calls list of every delta that has one."""
    return [
        chunk.choices[0].delta.tool_calls for chunk in chunks if chunk.choices and chunk.choices[0].delta.tool_calls
    ]


def assembled_calls(chunks: list[ChatCompletionChunk]) -> list[tuple[str, str, dict[str, Any]]]:
    """Merge tool-call deltas by index, the way an OpenAI-style client does."""
    calls: dict[int, dict[str, str]] = {}
    for delta in tool_deltas(chunks):
        for entry in delta:
            call = calls.setdefault(entry.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += entry.id or ""
            if entry.function:
                call["name"] += entry.function.name or ""
                call["arguments"] += entry.function.arguments or ""
    return [(call["id"], call["name"], json.loads(call["arguments"])) for _, call in sorted(calls.items())]


@pytest.mark.asyncio
async def test_text_reply_streams_pieces_in_order_with_usage_last(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(text_reply("Hello brave new world", usage=(12, 7)))

    chunks = await stream_chunks(client, "hello")

    assert texts(chunks) == ["Hello", " brave", " new", " world"]
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.x_groq is not None and first.x_groq.id == "req_1"
    assert {chunk.id for chunk in chunks} == {"chatcmpl-1"}
    assert {chunk.model for chunk in chunks} == {MODEL}
    assert last.choices[0].finish_reason == "stop"
    assert last.x_groq is not None and last.x_groq.id == "req_1" and last.x_groq.usage is not None
    assert (last.x_groq.usage.prompt_tokens, last.x_groq.usage.completion_tokens) == (12, 7)
    assert last.x_groq.usage.total_tokens == 19
    assert all(chunk.x_groq is None or chunk.x_groq.usage is None for chunk in chunks[:-1])
    assert fake.wait_outcome(0) == "completed"
    assert fake.requests[0]["model"] == MODEL and fake.requests[0]["stream"] is True
    assert fake.headers[0]["authorization"] == "Bearer test"


@pytest.mark.asyncio
async def test_empty_choices_chunks_open_and_close_the_stream(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(text_reply("Hi there", empty_choices_chunk=True, usage=(5, 2)))

    chunks = await stream_chunks(client)

    assert chunks[0].choices == []
    assert chunks[-1].choices == []
    assert chunks[-1].x_groq is not None and chunks[-1].x_groq.usage is not None
    assert chunks[-1].x_groq.usage.total_tokens == 7
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(chunk.x_groq is None or chunk.x_groq.usage is None for chunk in chunks[:-1])
    assert texts(chunks) == ["Hi", " there"]


@pytest.mark.asyncio
async def test_whole_tool_calls_come_one_per_delta(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(tool_calls_reply(CALLS, shape="whole", text="Let me check."))

    chunks = await stream_chunks(client, tools=[CLOCK_TOOL])

    assert texts(chunks) == ["Let", " me", " check."]
    deltas = tool_deltas(chunks)
    assert [[entry.index for entry in delta] for delta in deltas] == [[0], [1]]
    assert all(entry.type == "function" and entry.id and entry.function.name for delta in deltas for entry in delta)
    assert assembled_calls(chunks) == CALLS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].x_groq is not None and chunks[-1].x_groq.usage is not None
    assert chunks[-1].x_groq.usage.prompt_tokens == 20


@pytest.mark.asyncio
async def test_one_delta_tool_calls_share_a_delta(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(tool_calls_reply(CALLS, shape="one_delta"))

    chunks = await stream_chunks(client, tools=[CLOCK_TOOL])

    deltas = tool_deltas(chunks)
    assert len(deltas) == 1 and [entry.index for entry in deltas[0]] == [0, 1]
    assert assembled_calls(chunks) == CALLS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.asyncio
async def test_split_tool_calls_spread_arguments_over_deltas(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(tool_calls_reply(CALLS, shape="split"))

    chunks = await stream_chunks(client, tools=[CLOCK_TOOL])

    entries = [entry for delta in tool_deltas(chunks) for entry in delta]
    for index, (call_id, name, _) in enumerate(CALLS):
        own = [entry for entry in entries if entry.index == index]
        head, tails = own[0], own[1:]
        assert (head.id, head.type, head.function.name, head.function.arguments) == (call_id, "function", name, "")
        assert len(tails) >= 3
        assert all(tail.id is None and tail.function.name is None and tail.function.arguments for tail in tails)
    assert assembled_calls(chunks) == CALLS


@pytest.mark.asyncio
async def test_rate_limit_raises_with_retry_after(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(status_reply(429, message="Slow down", headers={"retry-after": "7"}))

    with pytest.raises(groq.RateLimitError) as caught:
        await stream_chunks(client)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert "Slow down" in caught.value.message
    assert fake.wait_outcome(0) == "status"


@pytest.mark.asyncio
async def test_cut_reply_breaks_the_stream_after_some_text(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(cut_reply("half an answer"))
    received: list[str] = []

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(httpx.RemoteProtocolError):
        async for chunk in stream:
            received.extend(texts([chunk]))

    assert "".join(received) == "half an answer"
    assert fake.wait_outcome(0) == "cut"


@pytest.mark.asyncio
async def test_error_event_raises_api_error_after_some_text(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(error_event_reply("so far so good", message="upstream exploded"))
    received: list[str] = []

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(groq.APIError, match="upstream exploded"):
        async for chunk in stream:
            received.extend(texts([chunk]))
    await stream.close()

    assert "".join(received) == "so far so good"
    assert fake.wait_outcome(0) == "completed"


@pytest.mark.asyncio
async def test_closing_a_slow_stream_early_is_seen_as_client_closed(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    received: list[str] = []

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "be slow please"}], stream=True
    )
    async for chunk in stream:
        received.extend(texts([chunk]))
        if len(received) == 3:
            break
    await stream.close()

    assert received == ["word0", " word1", " word2"]
    assert fake.wait_outcome(0, timeout=5) == "client_closed"


@pytest.mark.asyncio
async def test_default_echoes_the_last_user_message(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    chunks = await stream_chunks(client, "how are you")

    assert "".join(texts(chunks)) == "You said: how are you"


@pytest.mark.asyncio
async def test_default_calls_the_clock_tool_then_reports_its_result(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    chunks = await stream_chunks(client, "What TIME is it?", tools=[CLOCK_TOOL])

    assert assembled_calls(chunks) == [("call_1", "current_time", {"timezone": "UTC"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    messages = [
        {"role": "user", "content": "What TIME is it?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "current_time", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00 UTC"},
    ]
    chunks = await stream_chunks(client, messages=messages, tools=[CLOCK_TOOL])

    assert "".join(texts(chunks)) == "The tool said: 12:00 UTC"


@pytest.mark.asyncio
async def test_default_json_reply_without_streaming(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "summarise"}],
        response_format={"type": "json_object"},
        stream=False,
    )

    assert completion.object == "chat.completion"
    summary = json.loads(completion.choices[0].message.content or "")
    assert summary["title"] == "Fake summary" and summary["sentiment"] == "neutral"
    assert completion.usage is not None and completion.usage.total_tokens == 45
    assert completion.x_groq is not None and completion.x_groq.id == "req_1"
    assert fake.wait_outcome(0) == "completed"


@pytest.mark.asyncio
async def test_queue_is_fifo_and_falls_back_to_the_default(fake: FakeGroq, client: groq.AsyncGroq) -> None:
    fake.enqueue(json_reply("first", usage=(1, 1)), text_reply("second"))
    messages: Any = [{"role": "user", "content": "x"}]

    completion = await client.chat.completions.create(model=MODEL, messages=messages, stream=False)
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "first"
    assert completion.usage is not None and completion.usage.total_tokens == 2
    assert "".join(texts(await stream_chunks(client))) == "second"
    assert "".join(texts(await stream_chunks(client, "again"))) == "You said: again"
    assert fake.wait_requests(3) and len(fake.requests) == 3
    assert [fake.wait_outcome(index) for index in range(3)] == ["completed"] * 3


@pytest.mark.asyncio
async def test_other_paths_answer_404(fake: FakeGroq) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as http:
        missing = await http.get("/openai/v1/models")
        wrong = await http.post("/v1/chat/completions", json={"model": MODEL})

    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    assert wrong.status_code == 404
    assert fake.requests == [{"model": MODEL}] and fake.wait_outcome(0) == "status"
