"""The Groq client through the real groq SDK against the fake Groq server."""

import asyncio

import pytest

from chat.llm import Finish, LLMError, TextDelta, ToolCall, Usage
from chat.llm.groq_client import GroqChatModel

from .fake_groq import (
    chunk_events,
    content_deltas,
    cut_reply,
    error_event_reply,
    status_reply,
    streamed,
    text_reply,
    tool_calls_reply,
)


@pytest.fixture
def model(fake_groq_server):
    fake_groq_server.reset()
    return GroqChatModel(
        api_key="test-key",
        base_url=fake_groq_server.url,
        model="test-model",
        max_retries=0,
        timeout=5,
        connect_timeout=2,
    )


async def collect(model, messages=None, tools=None):
    items = []
    async for item in model.stream(messages=messages or [{"role": "user", "content": "hi"}], tools=tools or []):
        items.append(item)
    return items


@pytest.mark.asyncio
async def test_text_streams_in_pieces_with_usage_last(model, fake_groq_server):
    fake_groq_server.enqueue(text_reply("Hello there world", usage=(11, 3)))
    items = await collect(model)
    assert [i.text for i in items if isinstance(i, TextDelta)] == ["Hello", " there", " world"]
    usage = next(i for i in items if isinstance(i, Usage))
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 3)
    assert "total_time" in usage.timings
    finish = items[-1]
    assert isinstance(finish, Finish) and finish.reason == "stop" and finish.request_id
    assert fake_groq_server.requests[0]["stream"] is True
    assert fake_groq_server.headers[0]["authorization"] == "Bearer test-key"


@pytest.mark.asyncio
async def test_chunks_without_choices_are_skipped(model, fake_groq_server):
    fake_groq_server.enqueue(text_reply("fine thanks", usage=(5, 2), empty_choices_chunk=True))
    items = await collect(model)
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "fine thanks"
    assert next(i for i in items if isinstance(i, Usage)).completion_tokens == 2


CALLS = [("call_a", "current_time", {"timezone": "Europe/Paris"}), ("call_b", "system_status", {})]


@pytest.mark.asyncio
@pytest.mark.parametrize("shape", ["whole", "one_delta", "split"])
async def test_tool_calls_are_merged_from_each_delta_shape(model, fake_groq_server, shape):
    fake_groq_server.enqueue(tool_calls_reply(CALLS, shape=shape))
    items = await collect(model, tools=[{"type": "function", "function": {"name": "current_time"}}])
    calls = [i for i in items if isinstance(i, ToolCall)]
    assert [(c.call_id, c.name) for c in calls] == [("call_a", "current_time"), ("call_b", "system_status")]
    assert calls[0].arguments == '{"timezone": "Europe/Paris"}'
    assert calls[1].arguments == "{}"
    assert items[-1].reason == "tool_calls"
    assert fake_groq_server.requests[0]["tools"][0]["function"]["name"] == "current_time"


@pytest.mark.asyncio
async def test_429_is_rate_limited_with_retry_time(model, fake_groq_server):
    fake_groq_server.enqueue(status_reply(429, message="slow down", headers={"retry-after": "7"}))
    with pytest.raises(LLMError) as caught:
        await collect(model)
    assert (caught.value.code, caught.value.retry_after) == ("llm_rate_limited", 7.0)


@pytest.mark.asyncio
async def test_server_error_is_unavailable(model, fake_groq_server):
    fake_groq_server.enqueue(status_reply(503, message="overloaded"))
    with pytest.raises(LLMError) as caught:
        await collect(model)
    assert caught.value.code == "llm_unavailable"


@pytest.mark.asyncio
async def test_sdk_retry_recovers_from_one_server_error(fake_groq_server):
    fake_groq_server.reset()
    fake_groq_server.enqueue(status_reply(503, headers={"retry-after": "0"}), text_reply("second try"))
    model = GroqChatModel(
        api_key="k", base_url=fake_groq_server.url, model="m", max_retries=1, timeout=5, connect_timeout=2
    )
    items = await collect(model)
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "second try"
    assert len(fake_groq_server.requests) == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("reply", [cut_reply("partial answer here"), error_event_reply("partial answer here")])
async def test_failure_mid_stream_keeps_the_text_already_yielded(model, fake_groq_server, reply):
    fake_groq_server.enqueue(reply)
    seen = []
    with pytest.raises(LLMError) as caught:
        async for item in model.stream(messages=[{"role": "user", "content": "hi"}], tools=[]):
            seen.append(item)
    assert caught.value.code == "llm_unavailable"
    assert "".join(i.text for i in seen if isinstance(i, TextDelta)) == "partial answer here"


@pytest.mark.asyncio
async def test_unreachable_server_is_unavailable():
    model = GroqChatModel(
        api_key="k", base_url="http://127.0.0.1:9", model="m", max_retries=0, timeout=2, connect_timeout=1
    )
    with pytest.raises(LLMError) as caught:
        await collect(model)
    assert caught.value.code == "llm_unavailable"


@pytest.mark.asyncio
async def test_closing_the_stream_closes_the_upstream_connection(model, fake_groq_server):
    fake_groq_server.enqueue(text_reply(" ".join(f"w{n}" for n in range(200)), delay=0.05))

    async def consume():
        async for _ in model.stream(messages=[{"role": "user", "content": "hi"}], tools=[]):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(fake_groq_server.wait_outcome, 0, 5) == "client_closed"


@pytest.mark.asyncio
async def test_json_completion_for_summaries(model, fake_groq_server):
    raw = (await model.complete_json(messages=[{"role": "user", "content": "transcript"}], model="summary-model")).text
    assert '"title"' in raw
    request = fake_groq_server.requests[0]
    assert request["response_format"] == {"type": "json_object"}
    assert request["model"] == "summary-model"


def timed_model(fake_groq_server, *, first: float, between: float) -> GroqChatModel:
    return GroqChatModel(
        api_key="k",
        base_url=fake_groq_server.url,
        model="m",
        max_retries=0,
        timeout=30,
        connect_timeout=2,
        first_token_timeout=first,
        token_timeout=between,
    )


@pytest.mark.asyncio
async def test_no_first_token_in_time_is_unavailable_and_closes_upstream(fake_groq_server):
    fake_groq_server.reset()
    fake_groq_server.enqueue(text_reply("late words here", delay=1.0))
    model = timed_model(fake_groq_server, first=0.3, between=5)
    with pytest.raises(LLMError) as caught:
        await collect(model)
    assert caught.value.code == "llm_unavailable" and "first token" in caught.value.message
    assert await asyncio.to_thread(fake_groq_server.wait_outcome, 0, 5) == "client_closed"


@pytest.mark.asyncio
async def test_a_stall_between_tokens_is_unavailable_after_the_text_so_far(fake_groq_server):
    fake_groq_server.reset()
    fake_groq_server.enqueue(text_reply("first then stall", delay=0.6))
    model = timed_model(fake_groq_server, first=5, between=0.3)
    seen = []
    with pytest.raises(LLMError) as caught:
        async for item in model.stream(messages=[{"role": "user", "content": "hi"}], tools=[]):
            seen.append(item)
    assert "next token" in caught.value.message
    assert [i.text for i in seen if isinstance(i, TextDelta)] == ["first"]
    assert await asyncio.to_thread(fake_groq_server.wait_outcome, 0, 5) == "client_closed"


@pytest.mark.asyncio
async def test_a_server_slow_to_answer_at_all_counts_against_the_first_token(fake_groq_server):
    fake_groq_server.reset()
    fake_groq_server.enqueue(text_reply("late", header_delay=2))
    model = timed_model(fake_groq_server, first=0.3, between=5)
    with pytest.raises(LLMError) as caught:
        await collect(model)
    assert "first token" in caught.value.message


@pytest.mark.asyncio
async def test_a_body_that_ends_before_done_mid_reply_is_unavailable(model, fake_groq_server):
    """A proxy closing the stream cleanly mid-reply: no finish reason, no [DONE], so the reply is not whole."""
    fake_groq_server.enqueue(
        streamed("ended", lambda exchange: chunk_events(exchange, content_deltas("half an answer")), ending="end")
    )
    with pytest.raises(LLMError) as caught:
        await collect(model)
    assert caught.value.code == "llm_unavailable"


@pytest.mark.asyncio
async def test_a_whole_reply_missing_only_its_done_marker_is_kept(model, fake_groq_server):
    fake_groq_server.enqueue(
        streamed(
            "no_done",
            lambda exchange: chunk_events(exchange, content_deltas("whole answer"), finish="stop", usage=(3, 2)),
            ending="end",
        )
    )
    items = await collect(model)
    assert "".join(i.text for i in items if isinstance(i, TextDelta)) == "whole answer"
    assert [i.reason for i in items if isinstance(i, Finish)] == ["stop"]


def test_a_usage_object_with_odd_counts_gives_zero_not_an_error():
    """A server's usage with a string, a negative, NaN or a bool for a count: 0 (the round is then not overcharged)."""
    from chat.llm.chunks import usage_from

    assert usage_from({"prompt_tokens": 12, "completion_tokens": 3.0}) == Usage(12, 3)
    odd = usage_from({"prompt_tokens": "12", "completion_tokens": -3, "total_time": float("nan")})
    assert (odd.prompt_tokens, odd.completion_tokens, odd.timings) == (0, 0, {})
    assert usage_from({"prompt_tokens": True, "completion_tokens": float("inf")}) == Usage(0, 0)
