"""The WebSocket consumer through the real ASGI app, on the configured database and channel layer."""

import asyncio
import json
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import OperationalError
from django.utils import timezone

from audit import services
from audit.models import ChatSession, Event, SessionStatus, Summary, SummaryStatus
from audit.tasks import sessions_sweep

from .conftest import ChatClient, events_of, on_redis, service_missing, text_of
from .fake_groq import cut_reply, error_event_reply, json_reply, status_reply, text_reply, tool_calls_reply

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

SLOW_TEXT = " ".join(f"word{n}" for n in range(200))


@sync_to_async
def session_of(session_id) -> ChatSession:
    return ChatSession.objects.get(pk=session_id)


@sync_to_async
def summary_of(session_id) -> Summary | None:
    return Summary.objects.filter(session_id=session_id).first()


def types_of(events: list[Event]) -> list[str]:
    return [event.type for event in events]


async def tokens(client: ChatClient, count: int) -> list[dict]:
    """Receive frames until `count` tokens have arrived."""
    frames: list[dict] = []
    while sum(frame["type"] == "token" for frame in frames) < count:
        frames.append(await client.receive())
    return frames


async def test_offline_reply_streams_tokens_and_is_recorded_once(avisitor):
    client = ChatClient(await avisitor())
    session = await client.connect()
    assert (session["resumed"], session["history"], session["model"]) == (False, [], "offline-demo")
    assert session["llm_mode"] == "offline"
    frames = await client.turn("hello there")
    assert sum(frame["type"] == "token" for frame in frames) > 5
    done = frames[-1]
    assert done["type"] == "done" and done["stopped"] is False
    assert done["ttft_ms"] is not None and done["duration_ms"] >= done["ttft_ms"]
    events = await events_of(client.session_id)
    assert types_of(events) == ["user_message", "assistant_message"]
    assert [event.seq for event in events] == [1, 2]
    assert events[0].content == "hello there"
    assert events[1].content == text_of(frames)
    assert events[1].data["stopped"] is False
    await client.close()


@pytest.mark.parametrize(
    ("question", "zone"),
    [
        ("What time is it in Asia/Tokyo?", "Asia/Tokyo"),
        ("What time is it in Tokyo?", "Asia/Tokyo"),
        ("what's the time in new york", "America/New_York"),
        ("What day is it?", "UTC"),
    ],
)
async def test_offline_model_calls_the_time_tool(avisitor, question, zone):
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn(question)
    call = next(frame for frame in frames if frame["type"] == "tool_call")
    result = next(frame for frame in frames if frame["type"] == "tool_result")
    assert (call["name"], call["arguments"]) == ("current_time", {"timezone": zone})
    assert result["ok"] is True and result["result"]["timezone"] == zone
    assert result["result"]["local_time"] in text_of(frames)
    await client.close()


async def test_offline_model_uses_the_calculator(avisitor):
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("Could you work out 12 * (3 + 4) for me?")
    call = next(frame for frame in frames if frame["type"] == "tool_call")
    result = next(frame for frame in frames if frame["type"] == "tool_result")
    assert (call["name"], call["arguments"]) == ("calculate", {"expression": "12 * (3 + 4)"})
    assert result["result"]["result"] == 84
    assert text_of(frames) == "12 * (3 + 4) = 84."
    await client.close()


async def test_offline_model_searches_the_visitors_sessions(avisitor):
    visitor = await avisitor()
    earlier = ChatClient(visitor)
    await earlier.connect()
    await earlier.turn("Plan a weekend in Lisbon")
    await earlier.close()
    client = ChatClient(visitor)
    await client.connect()
    frames = await client.turn("Search my earlier sessions for Lisbon")
    call = next(frame for frame in frames if frame["type"] == "tool_call")
    assert (call["name"], call["arguments"]) == ("sessions_search", {"query": "Lisbon"})
    assert text_of(frames) == "I found 1 earlier session(s) of yours: Plan a weekend in Lisbon."
    await client.close()


async def test_groq_reply_streams_with_usage_recorded(avisitor, fake_groq):
    fake_groq.enqueue(text_reply("Streaming from the fake Groq", usage=(40, 6)))
    client = ChatClient(await avisitor())
    assert (await client.connect())["llm_mode"] == "groq"
    frames = await client.turn("hi")
    assert [frame["content"] for frame in frames if frame["type"] == "token"] == [
        "Streaming",
        " from",
        " the",
        " fake",
        " Groq",
    ]
    assert frames[-1]["usage"] == {"prompt_tokens": 40, "completion_tokens": 6}
    reply = (await events_of(client.session_id))[-1]
    assert reply.type == "assistant_message"
    assert reply.data["usage"] == {"prompt_tokens": 40, "completion_tokens": 6}
    assert reply.data["ttft_ms"] is not None
    assert reply.data["request_ids"] and reply.data["finish_reason"] == "stop"
    session = await session_of(client.session_id)
    assert (session.prompt_tokens, session.completion_tokens) == (40, 6)
    sent = fake_groq.requests[0]
    assert sent["messages"][0]["role"] == "system"
    assert sent["messages"][-1] == {"role": "user", "content": "hi"}
    assert {tool["function"]["name"] for tool in sent["tools"]} >= {"current_time", "system_status"}
    await client.close()


@pytest.mark.parametrize("shape", ["whole", "one_delta", "split"])
async def test_tool_calls_run_and_their_results_go_back_to_the_model(avisitor, fake_groq, shape):
    fake_groq.enqueue(
        tool_calls_reply(
            [("call_1", "current_time", {"timezone": "Asia/Tokyo"}), ("call_2", "system_status", {})], shape=shape
        ),
        text_reply("Done looking."),
    )
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("time and status please")
    kinds = [frame["type"] for frame in frames if frame["type"] != "token"]
    assert kinds == ["tool_call", "tool_call", "tool_result", "tool_result", "done"]
    calls = [frame for frame in frames if frame["type"] == "tool_call"]
    results = [frame for frame in frames if frame["type"] == "tool_result"]
    assert calls[0]["arguments"] == {"timezone": "Asia/Tokyo"}
    assert [r["call_id"] for r in results] == ["call_1", "call_2"]
    assert all(r["ok"] for r in results)
    assert results[0]["result"]["timezone"] == "Asia/Tokyo"
    assert text_of(frames) == "Done looking."
    second = fake_groq.requests[1]["messages"]
    assert second[-3]["tool_calls"][1]["id"] == "call_2"
    assert [m.get("tool_call_id") for m in second[-2:]] == ["call_1", "call_2"]
    events = await events_of(client.session_id)
    assert types_of(events) == [
        "user_message",
        "tool_call",
        "tool_call",
        "tool_result",
        "tool_result",
        "assistant_message",
    ]
    assert events[1].data == {"call_id": "call_1", "name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}}
    assert events[3].data["ok"] is True and "duration_ms" in events[3].data
    assert events[5].data["rounds"] == 2
    assert {"current_time", "system_status", "calculate", "sessions_search"} <= set(events[5].data["tools_offered"])
    assert (await session_of(client.session_id)).tool_call_count == 2
    await client.close()


@pytest.fixture
def rendezvous_tools():
    """Two tools that can only finish if they run at the same time: each waits for the other."""
    from chat.tools import registry

    saved = dict(registry._registry)
    first_here, second_here = asyncio.Event(), asyncio.Event()

    @registry.tool(timeout=2)
    async def meet_first() -> str:
        """Wait for meet_second."""
        first_here.set()
        await second_here.wait()
        return "first met second"

    @registry.tool(timeout=2)
    async def meet_second() -> str:
        """Wait for meet_first."""
        await first_here.wait()
        second_here.set()
        await asyncio.sleep(0.05)  # finishes after meet_first has been released
        return "second met first"

    yield
    registry._registry.clear()
    registry._registry.update(saved)


async def test_calls_of_one_round_run_concurrently_and_answer_in_call_order(avisitor, fake_groq, rendezvous_tools):
    # Run one after the other, meet_first would wait for meet_second until its 2 s timeout.
    fake_groq.enqueue(
        tool_calls_reply([("m2", "meet_second", {}), ("m1", "meet_first", {})], shape="one_delta"),
        text_reply("They met."),
    )
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("check the time they meet")
    results = [(f["call_id"], f["ok"], f["result"]) for f in frames if f["type"] == "tool_result"]
    assert results == [("m2", True, "second met first"), ("m1", True, "first met second")]
    await client.close()


async def test_bad_tool_calls_are_answered_with_errors_and_the_turn_goes_on(avisitor, fake_groq):
    fake_groq.enqueue(
        tool_calls_reply([("c1", "current_time", {"timezone": 5}), ("c2", "launch_rockets", {})]),
        text_reply("Sorry about that."),
    )
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("check the time and launch the rockets")
    results = [frame for frame in frames if frame["type"] == "tool_result"]
    assert [(r["ok"], r["result"]) for r in results] == [
        (False, "argument 'timezone' must be string"),
        (False, "unknown tool 'launch_rockets'"),
    ]
    assert frames[-1]["type"] == "done"
    assert '"ok": false' in fake_groq.requests[1]["messages"][-1]["content"]
    await client.close()


async def test_round_cap_forces_a_text_answer_without_tools(avisitor, fake_groq, settings):
    settings.CHAT_MAX_TOOL_ROUNDS = 1
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("what time is it?")
    assert [frame["type"] for frame in frames].count("tool_call") == 1
    assert text_of(frames).startswith("The tool said:")
    assert "tools" in fake_groq.requests[0] and "tools" not in fake_groq.requests[1]
    await client.close()


async def test_tool_calls_in_the_forced_last_round_are_not_run_and_say_so(avisitor, fake_groq, settings):
    settings.CHAT_MAX_TOOL_ROUNDS = 1
    fake_groq.enqueue(
        tool_calls_reply([("c1", "current_time", {})]),
        tool_calls_reply([("c2", "current_time", {})]),  # offered no tools, it calls one anyway
    )
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("what time is it?")
    assert [f["call_id"] for f in frames if f["type"] == "tool_call"] == ["c1"]
    assert [(f["type"], f.get("code")) for f in frames[-2:]] == [("error", "llm_no_answer"), ("done", None)]
    reply = [e for e in await events_of(client.session_id) if e.type == "assistant_message"][-1]
    assert reply.data["ignored_tool_calls"] == ["current_time"]
    await client.close()


async def test_a_huge_tool_result_is_cut_before_it_goes_back_to_the_model(avisitor, fake_groq, settings):
    settings.CHAT_TOOL_RESULT_MAX_CHARS = 100
    fake_groq.enqueue(tool_calls_reply([("c1", "system_status", {})]), text_reply("ok"))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("server status please")
    sent = fake_groq.requests[1]["messages"][-1]["content"]
    assert len(sent) < 200 and "…[cut: " in sent
    await client.close()


async def test_stop_closes_upstream_and_keeps_the_partial_reply(avisitor, fake_groq):
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.05))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send({"type": "message", "content": "talk slowly"})
    before = await tokens(client, 3)
    await client.send({"type": "stop"})
    after = await client.until("done")
    assert after[-1]["stopped"] is True
    assert await asyncio.to_thread(fake_groq.wait_outcome, 0, 5) == "client_closed"
    reply = (await events_of(client.session_id))[-1]
    assert reply.type == "assistant_message"
    assert reply.content == text_of(before + after)
    assert reply.content.startswith("word0 word1 word2")
    assert len(reply.content) < len(SLOW_TEXT)
    assert (reply.data["stopped"], reply.data["stop_reason"]) == (True, "stop")
    # The socket is still usable.
    fake_groq.enqueue(text_reply("next turn"))
    assert text_of(await client.turn("again")) == "next turn"
    await client.close()


async def test_a_stop_right_after_the_message_still_ends_with_done(avisitor, fake_groq):
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.05))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send({"type": "message", "content": "never mind"})
    await client.send({"type": "stop"})
    frames = await client.until("done")
    assert frames[-1]["stopped"] is True
    reply = (await events_of(client.session_id))[-1]
    assert (reply.type, reply.data["stop_reason"]) == ("assistant_message", "stop")
    await client.close()


async def test_a_stop_landing_in_a_database_write_still_ends_with_done(avisitor, fake_groq, monkeypatch):
    """asgiref replaces the CancelledError raised in a database call: the stop reason must survive it."""
    write_started = asyncio.Event()

    def slow_record(**kwargs):
        if kwargs["type"] == "tool_call":
            write_started.set()
            time.sleep(0.5)
        return services.event_record(**kwargs)

    monkeypatch.setattr("chat.turns.event_record", database_sync_to_async(slow_record))
    fake_groq.enqueue(tool_calls_reply([("c1", "current_time", {})]), text_reply("unused"))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send({"type": "message", "content": "what time?"})
    await write_started.wait()
    await client.send({"type": "stop"})
    frames = await client.until("done")
    assert frames[-1]["stopped"] is True
    reply = [e for e in await events_of(client.session_id) if e.type == "assistant_message"][-1]
    assert reply.data["stop_reason"] == "stop"
    await client.close()


async def test_ping_is_answered_while_a_reply_streams(avisitor, fake_groq):
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.05))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send({"type": "message", "content": "go"})
    await tokens(client, 2)
    await client.send({"type": "ping"})
    frames = await client.until("pong")
    assert frames[-1] == {"type": "pong"}
    await client.send({"type": "stop"})
    await client.until("done")
    await client.close()


async def test_a_connected_idle_session_is_left_open_by_the_sweep(avisitor, settings):
    """Its process renews the socket's lease, however long ago the last message was."""
    settings.CHAT_SOCKET_LEASE_SECONDS = 0.9  # renewed every 0.3 s
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hello")
    long_ago = timezone.now() - timedelta(hours=2)
    await sync_to_async(ChatSession.objects.filter(pk=client.session_id).update)(last_activity_at=long_ago)
    await asyncio.sleep(2)  # several lease lengths
    assert (await sync_to_async(sessions_sweep.apply)()).get()["ended"] == 0
    assert (await session_of(client.session_id)).status == SessionStatus.ACTIVE
    await client.send({"type": "ping"})
    assert await client.receive() == {"type": "pong"}
    await client.close()
    assert (await session_of(client.session_id)).status == SessionStatus.ENDED


async def test_a_second_message_while_replying_is_busy(avisitor, fake_groq):
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.05))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send({"type": "message", "content": "first"})
    await tokens(client, 2)
    await client.send({"type": "message", "content": "second"})
    frames = await client.until("error")
    assert frames[-1]["code"] == "busy"
    await client.send({"type": "stop"})
    await client.until("done")
    events = await events_of(client.session_id)
    assert [event.content for event in events if event.type == "user_message"] == ["first"]
    await client.close()


async def test_a_second_socket_on_the_same_session_sees_the_turn_live_and_is_busy_during_it(avisitor, fake_groq):
    visitor = await avisitor()
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.05))
    first = ChatClient(visitor)
    await first.connect()
    second = ChatClient(visitor, session_id=first.session_id)
    assert (await second.connect())["resumed"] is True
    await first.send({"type": "message", "content": "first"})
    seen_first = await tokens(first, 2)
    await second.send({"type": "message", "content": "from the other tab"})
    await first.send({"type": "stop"})
    seen_first += await first.until("done")
    seen_second = await second.until("done")
    # The other tab is told of the message, then sent the same numbered frames.
    assert seen_second[0]["type"] == "user_message" and seen_second[0]["content"] == "first"
    assert [f for f in seen_second if f["type"] == "error"][0]["code"] == "busy"
    numbered = [f for f in seen_second if "frame_seq" in f]
    assert [f["frame_seq"] for f in numbered] == list(range(1, len(numbered) + 1))
    assert text_of(seen_second) == text_of(seen_first) != ""
    assert seen_first[-1]["stopped"] is True and seen_second[-1] == seen_first[-1]
    # The first socket leaving does not end the session while the second is open.
    await first.close()
    assert (await session_of(first.session_id)).status == SessionStatus.ACTIVE
    fake_groq.enqueue(text_reply("your turn"))
    assert text_of(await second.turn("now me")) == "your turn"
    await second.close()
    assert (await session_of(first.session_id)).status == SessionStatus.ENDED


async def test_bad_input_gets_error_frames_and_the_socket_stays_open(avisitor, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    client = ChatClient(await avisitor())
    await client.connect()
    cases = [
        ("{oops", "invalid_json"),
        ("[]", "invalid_message"),
        ('{"type": "message", "content": ""}', "invalid_message"),
        ('{"type": "message", "content": ["x"]}', "invalid_message"),
        ('{"type": "shout"}', "invalid_message"),
        ('{"type": "message", "content": "' + "x" * 51 + '"}', "message_too_large"),
    ]
    for text, code in cases:
        await client.comm.send_to(text_data=text)
        frame = await client.receive()
        assert (frame["type"], frame["code"]) == ("error", code), text
    await client.comm.send_to(bytes_data=b"\x89PNG")
    frame = await client.receive()
    assert (frame["type"], frame["code"]) == ("error", "invalid_message")
    assert await client.comm.receive_nothing(timeout=0.2)
    await client.send({"message": "the older shape still works"})
    frames = await client.until("done")
    assert frames[-1]["stopped"] is False
    assert types_of(await events_of(client.session_id)) == ["user_message", "assistant_message"]
    await client.close()


async def test_too_many_messages_are_rate_limited(avisitor, settings):
    settings.CHAT_RATE_LIMIT_MESSAGES = 2
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("one")
    await client.turn("two")
    await client.send({"type": "message", "content": "three"})
    frame = await client.receive()
    assert (frame["type"], frame["code"]) == ("error", "rate_limited")
    await client.close()


async def test_someone_elses_session_is_refused_with_4403(avisitor):
    owner = ChatClient(await avisitor())
    await owner.connect()
    await owner.turn("mine")
    intruder = ChatClient(await avisitor(), session_id=owner.session_id)
    connected, _ = await intruder.comm.connect()
    assert connected
    assert await intruder.comm.receive_output() == {"type": "websocket.close", "code": 4403}
    cookieless = ChatClient(None, session_id=owner.session_id)
    await cookieless.comm.connect()
    assert (await cookieless.comm.receive_output())["code"] == 4403
    await intruder.close()
    await cookieless.close()
    assert types_of(await events_of(owner.session_id)) == ["user_message", "assistant_message"]
    await owner.close()


async def test_a_users_session_follows_the_user_not_the_cookie(avisitor):
    user = await sync_to_async(get_user_model().objects.create_user)("ada", password="pw")
    first = ChatClient(await avisitor(user))
    await first.connect()
    await first.turn("hello")
    await first.close()
    # Logged in again elsewhere: another session cookie, same user.
    again = ChatClient(await avisitor(user), session_id=first.session_id)
    frame = await again.connect()
    assert frame["resumed"] is True and len(frame["history"]) == 2
    await again.close()


async def test_anonymous_visitors_are_refused_with_4401_when_not_allowed(avisitor, settings):
    settings.CHAT_ALLOW_ANONYMOUS = False
    anonymous = ChatClient(await avisitor())
    await anonymous.comm.connect()
    assert await anonymous.comm.receive_output() == {"type": "websocket.close", "code": 4401}
    await anonymous.close()
    user = await sync_to_async(get_user_model().objects.create_user)("grace", password="pw")
    member = ChatClient(await avisitor(user))
    assert (await member.connect())["resumed"] is False
    await member.close()


async def test_a_foreign_origin_fails_the_handshake(avisitor):
    client = ChatClient(await avisitor(), origin=b"http://evil.example")
    connected, _ = await client.comm.connect()
    assert not connected
    await client.close()
    assert not await sync_to_async(ChatSession.objects.filter(pk=client.session_id).exists)()


async def test_a_visitor_without_a_cookie_is_a_new_visitor_each_time():
    client = ChatClient(None)
    assert (await client.connect())["resumed"] is False
    await client.turn("hello")
    await client.close()
    assert (await session_of(client.session_id)).anon_key
    again = ChatClient(None, session_id=client.session_id)
    await again.comm.connect()
    assert await again.comm.receive_output() == {"type": "websocket.close", "code": 4403}
    await again.close()


async def test_resume_sends_the_history_and_the_next_turn_carries_it(avisitor, fake_groq):
    visitor = await avisitor()
    fake_groq.enqueue(text_reply("First answer."))
    client = ChatClient(visitor)
    await client.connect()
    await client.turn("first question")
    await client.close()
    assert (await session_of(client.session_id)).status == SessionStatus.ENDED

    again = ChatClient(visitor, session_id=client.session_id)
    frame = await again.connect()
    assert frame["resumed"] is True
    assert [(m["role"], m["content"]) for m in frame["history"]] == [
        ("user", "first question"),
        ("assistant", "First answer."),
    ]
    assert all(m["created_at"] for m in frame["history"])
    assert (await session_of(client.session_id)).status == SessionStatus.ACTIVE
    fake_groq.enqueue(text_reply("Second answer."))
    await again.turn("second question")
    sent = [(m["role"], m["content"]) for m in fake_groq.requests[-1]["messages"][1:]]
    assert sent == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
    ]
    events = await events_of(client.session_id)
    assert [event.seq for event in events] == [1, 2, 3, 4]
    await again.close()


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (status_reply(429, message="slow down", headers={"retry-after": "12"}), "llm_rate_limited"),
        (status_reply(500, message="kaput"), "llm_unavailable"),
        (cut_reply("Half an ans"), "llm_unavailable"),
        (error_event_reply("Half an ans"), "llm_unavailable"),
    ],
)
async def test_model_failures_send_an_error_then_done_and_lose_nothing(avisitor, fake_groq, reply, code):
    fake_groq.enqueue(reply)
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("question")
    error, done = frames[-2], frames[-1]
    assert (error["type"], error["code"]) == ("error", code)
    assert done["type"] == "done" and done["stopped"] is False
    if code == "llm_rate_limited":
        assert error["retry_after"] == 12.0
    events = await events_of(client.session_id)
    assert types_of(events) == ["user_message", "assistant_message", "error"]
    partial = text_of(frames)
    assert events[1].content == partial
    assert events[1].data["error_code"] == code
    assert events[2].data["code"] == code
    # The next turn works and carries the partial reply as history.
    fake_groq.enqueue(text_reply("Recovered."))
    assert text_of(await client.turn("again?")) == "Recovered."
    if partial:
        assert {"role": "assistant", "content": partial} in fake_groq.requests[-1]["messages"]
    await client.close()


@pytest.mark.parametrize(("finish", "code"), [("length", "llm_length"), ("content_filter", "llm_content_filter")])
async def test_a_reply_cut_short_by_the_model_is_kept_and_marked(avisitor, fake_groq, finish, code):
    fake_groq.enqueue(text_reply("An unfinished", finish=finish))
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("write a long essay")
    assert [(f["type"], f.get("code")) for f in frames if f["type"] != "token"] == [("error", code), ("done", None)]
    reply = [e for e in await events_of(client.session_id) if e.type == "assistant_message"][-1]
    assert reply.content == "An unfinished"
    assert (reply.data["finish_reason"], reply.data["error_code"]) == (finish, code)
    fake_groq.enqueue(text_reply("Fine again."))
    assert text_of(await client.turn("shorter please")) == "Fine again."
    await client.close()


async def test_a_database_failure_mid_turn_is_an_error_and_the_socket_survives(avisitor, monkeypatch):
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("recorded before the outage")

    async def database_down(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    # A context of its own: `monkeypatch.undo()` would also undo the autouse
    # fixture that runs in-process tasks inline, and the summary would then
    # still be running on its thread when the test's teardown empties the database.
    with monkeypatch.context() as outage:
        outage.setattr("chat.turns.event_record", database_down)
        frames = await client.turn("lost in the outage")
        assert [(f["type"], f.get("code")) for f in frames if f["type"] != "token"] == [
            ("error", "internal"),
            ("done", None),
        ]
        await client.send({"type": "ping"})
        assert await client.receive() == {"type": "pong"}
    assert (await client.turn("after the outage"))[-1]["type"] == "done"
    events = await events_of(client.session_id)
    assert [e.content for e in events if e.type == "user_message"] == [
        "recorded before the outage",
        "after the outage",
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    await client.close()


async def test_the_next_message_may_follow_done_at_once(avisitor, fake_groq, monkeypatch):
    """`done` is sent only after the turn is released, so a script never sees `busy` for a message sent on `done`."""
    from chat import turns

    release = turns.turn_release

    async def slow_release(**kwargs):
        await asyncio.sleep(0.5)
        await release(**kwargs)

    monkeypatch.setattr(turns, "turn_release", slow_release)
    fake_groq.enqueue(text_reply("First."), text_reply("Second."))
    client = ChatClient(await avisitor())
    await client.connect()
    assert text_of(await client.turn("one")) == "First."
    frames = await client.turn("two")
    assert [f["type"] for f in frames if f["type"] != "token"] == ["done"]
    assert text_of(frames) == "Second."
    await client.close()


async def test_a_database_down_at_connect_is_an_error_then_a_4500_close(avisitor, monkeypatch):
    def database_down(**kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr("chat.services.session_join", database_down)
    client = ChatClient(await avisitor())
    connected, _ = await client.comm.connect()
    assert connected
    frame = await client.receive()
    assert (frame["type"], frame["code"]) == ("error", "internal")
    assert await client.comm.receive_output() == {"type": "websocket.close", "code": 4500}
    await client.close()


async def test_a_client_leaving_mid_reply_keeps_the_partial_reply_and_ends_the_session(avisitor, fake_groq, settings):
    """With nobody left to read it (CHAT_UNATTENDED_REPLY_SECONDS 0), the reply stops at once."""
    settings.CHAT_UNATTENDED_REPLY_SECONDS = 0
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.05))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send({"type": "message", "content": "tell me everything"})
    streamed = await tokens(client, 3)
    await client.close()
    assert await asyncio.to_thread(fake_groq.wait_outcome, 0, 5) == "client_closed"
    events = await events_of(client.session_id)
    reply = next(event for event in events if event.type == "assistant_message")
    assert reply.content.startswith(text_of(streamed))
    assert (reply.data["stopped"], reply.data["stop_reason"]) == (True, "client_gone")
    session = await session_of(client.session_id)
    assert session.status == SessionStatus.ENDED and session.duration_seconds > 0
    # Tasks run in process in tests: the summary (fake Groq's JSON answer) is there.
    summary = await summary_of(client.session_id)
    assert summary.status == SummaryStatus.DONE and summary.title == "Fake summary"


async def test_closing_the_socket_writes_the_summary(avisitor):
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("Please plan my trip to Lisbon")
    await client.close()
    summary = await summary_of(client.session_id)
    assert summary.status == SummaryStatus.DONE
    assert summary.title == "Please plan my trip to Lisbon"
    assert "lisbon" in summary.key_topics
    assert summary.covers_seq == 2
    session = await session_of(client.session_id)
    assert session.title == summary.title


@pytest.mark.local_tasks_thread
async def test_a_slow_summary_in_process_does_not_hold_up_other_sockets(avisitor, fake_groq):
    summary = {"title": "Slow", "text": "Written slowly.", "key_topics": [], "action_items": [], "sentiment": "neutral"}
    fake_groq.enqueue(text_reply("Quick answer."), json_reply(json.dumps(summary), delay=2))
    bystander = ChatClient(await avisitor())
    await bystander.connect()
    leaving = ChatClient(await avisitor())
    await leaving.connect()
    await leaving.turn("hello")
    await leaving.close()  # queues the summary; the model takes 2 s to write it
    started = time.monotonic()
    await bystander.send({"type": "ping"})
    assert await bystander.receive(timeout=1) == {"type": "pong"}
    assert time.monotonic() - started < 1
    deadline = time.monotonic() + 10
    while (written := await summary_of(leaving.session_id)) is None or written.status != SummaryStatus.DONE:
        assert time.monotonic() < deadline, "the summary never arrived"
        await asyncio.sleep(0.1)
    assert written.title == "Slow"
    await bystander.close()


async def test_a_session_left_without_a_message_is_deleted_and_gets_no_summary(avisitor):
    """A page opened and left leaves nothing behind; a session with a message is ended and kept."""
    visitor = await avisitor()
    client = ChatClient(visitor)
    await client.connect()
    await client.close()
    assert not await sync_to_async(ChatSession.objects.filter(pk=client.session_id).exists)()
    assert await summary_of(client.session_id) is None
    talked = ChatClient(visitor)
    await talked.connect()
    await talked.turn("hello")
    await talked.close()
    assert (await session_of(talked.session_id)).status == SessionStatus.ENDED


async def test_a_message_on_a_session_deleted_as_empty_asks_the_socket_to_reconnect(avisitor):
    """The sweep deleted the empty session while its socket's process could not renew the lease."""
    client = ChatClient(await avisitor())
    await client.connect()
    await sync_to_async(ChatSession.objects.filter(pk=client.session_id).delete)()
    await client.send({"type": "message", "content": "anyone there?"})
    frame = await client.receive()
    assert (frame["type"], frame["code"]) == ("error", "internal")
    assert await client.comm.receive_output() == {"type": "websocket.close", "code": 4500}
    await client.close()
    # Connecting again recreates it, and the chat goes on.
    again = ChatClient(client.visitor, session_id=client.session_id)
    assert (await again.connect())["resumed"] is False
    assert (await again.turn("now?"))[-1]["type"] == "done"
    await again.close()


async def test_a_socket_outlives_the_redis_client_timeout(avisitor):
    """redis-py 8's 5 s default socket timeout killed channels-redis consumers (channels_redis#422)."""
    if not on_redis():
        service_missing("REDIS_URL is not set: the Redis channel layer is not in use")
    client = ChatClient(await avisitor())
    await client.connect()
    await asyncio.sleep(35)
    await client.send({"type": "ping"})
    assert await client.receive() == {"type": "pong"}
    await client.close()
