"""A reply that outlives its socket: picked up again from a position, seen by every socket, stopped from any.

In one process here (the in-memory or Redis layer of the test settings);
tests/test_resume_processes.py runs the same across two daphne processes.
"""

import asyncio
import time
import uuid

import pytest
from asgiref.sync import sync_to_async

from audit.models import ChatSession, Event, EventType, SessionStatus

from .conftest import ChatClient, text_of
from .fake_groq import text_reply

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

SLOW_TEXT = " ".join(f"word{n}" for n in range(60))


@sync_to_async
def session_of(session_id) -> ChatSession:
    return ChatSession.objects.get(pk=session_id)


@sync_to_async
def replies_of(session_id) -> list[Event]:
    return list(Event.objects.filter(session_id=session_id, type=EventType.ASSISTANT_MESSAGE).order_by("seq"))


async def until_turn_over(session_id, timeout: float = 15) -> ChatSession:
    """Wait until the session's turn is released (its reply recorded)."""
    deadline = time.monotonic() + timeout
    while (session := await session_of(session_id)).turn_lease is not None:
        assert time.monotonic() < deadline, "the turn never ended"
        await asyncio.sleep(0.05)
    return session


async def frames_until_tokens(client: ChatClient, count: int) -> list[dict]:
    frames: list[dict] = []
    while sum(frame["type"] == "token" for frame in frames) < count:
        frames.append(await client.receive())
    return frames


def seqs_of(frames: list[dict]) -> list[int]:
    return [frame["frame_seq"] for frame in frames if "frame_seq" in frame]


async def test_a_reply_goes_on_after_its_socket_leaves_and_is_resumed_from_a_position(avisitor, fake_groq):
    visitor = await avisitor()
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.02))
    first = ChatClient(visitor)
    await first.connect()
    await first.send({"type": "message", "content": "tell me a long story"})
    before = await frames_until_tokens(first, 5)
    await first.close()
    # The reply was not cancelled by the close, and the session stays open while it runs.
    assert (await session_of(first.session_id)).status == SessionStatus.ACTIVE
    position = seqs_of(before)[-1]
    again = ChatClient(visitor, session_id=first.session_id, after=position)
    session = await again.connect()
    assert session["turn_running"] is True and session["frame_seq"] == 0
    # The running turn's message comes as its frames, not in the history.
    assert session["history"] == []
    after = await again.until("done", timeout=15)
    assert seqs_of(after)[0] == position + 1
    assert seqs_of(before + after) == list(range(2, seqs_of(after)[-1] + 1))  # 1: its user_message
    assert text_of(before + after) == SLOW_TEXT
    assert after[-1]["stopped"] is False and [f["type"] for f in after].count("done") == 1
    assert await asyncio.to_thread(fake_groq.wait_outcome, 0, 5) == "completed"
    reply = (await replies_of(first.session_id))[0]
    assert reply.content == SLOW_TEXT and reply.data["stopped"] is False
    ended = await until_turn_over(first.session_id)
    assert ended.frame_seq == seqs_of(after)[-1]
    await again.close()
    assert (await session_of(first.session_id)).status == SessionStatus.ENDED


async def test_a_socket_without_a_position_is_sent_the_whole_running_turn(avisitor, fake_groq):
    visitor = await avisitor()
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.02))
    first = ChatClient(visitor)
    await first.connect()
    await first.send({"type": "message", "content": "from the first tab"})
    await frames_until_tokens(first, 3)
    second = ChatClient(visitor, session_id=first.session_id)
    assert (await second.connect())["turn_running"] is True
    seen = await second.until("done", timeout=15)
    assert seen[0] == {"type": "user_message", "content": "from the first tab", "frame_seq": 1}
    assert seqs_of(seen) == list(range(1, len(seqs_of(seen)) + 1))
    assert text_of(seen) == SLOW_TEXT
    await first.until("done", timeout=15)
    await first.close()
    await second.close()


async def test_a_socket_resuming_after_the_turn_ended_finds_the_reply_in_the_history(avisitor, fake_groq):
    visitor = await avisitor()
    fake_groq.enqueue(text_reply("A short answer.", delay=0.05))
    first = ChatClient(visitor)
    await first.connect()
    await first.send({"type": "message", "content": "quick one"})
    before = await frames_until_tokens(first, 1)
    await first.close()
    await until_turn_over(first.session_id)
    again = ChatClient(visitor, session_id=first.session_id, after=seqs_of(before)[-1])
    session = await again.connect()
    assert session["turn_running"] is False
    assert [(m["role"], m["content"]) for m in session["history"]] == [
        ("user", "quick one"),
        ("assistant", "A short answer."),
    ]
    # Nothing of the finished turn is sent again.
    assert await again.comm.receive_nothing(timeout=0.5)
    await again.close()


async def test_stop_from_another_socket_stops_the_reply_for_both(avisitor, fake_groq):
    visitor = await avisitor()
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.05))
    first = ChatClient(visitor)
    await first.connect()
    second = ChatClient(visitor, session_id=first.session_id)
    await second.connect()
    await first.send({"type": "message", "content": "go on and on"})
    await frames_until_tokens(second, 2)
    await second.send({"type": "stop"})
    done_first = (await first.until("done"))[-1]
    done_second = (await second.until("done"))[-1]
    assert done_first["stopped"] is True and done_second == done_first
    assert await asyncio.to_thread(fake_groq.wait_outcome, 0, 5) == "client_closed"
    assert (await replies_of(first.session_id))[0].data["stop_reason"] == "stop"
    await first.close()
    await second.close()


async def test_a_reply_nobody_follows_is_stopped_after_the_unattended_cap(avisitor, fake_groq, settings):
    settings.CHAT_UNATTENDED_REPLY_SECONDS = 0.3
    fake_groq.enqueue(text_reply(SLOW_TEXT, delay=0.05))
    client = ChatClient(await avisitor())
    await client.connect()
    await client.send({"type": "message", "content": "and then?"})
    await frames_until_tokens(client, 2)
    await client.close()
    assert await asyncio.to_thread(fake_groq.wait_outcome, 0, 5) == "client_closed"
    await until_turn_over(client.session_id)
    reply = (await replies_of(client.session_id))[0]
    assert (reply.data["stopped"], reply.data["stop_reason"]) == (True, "client_gone")
    assert 0 < len(reply.content) < len(SLOW_TEXT)
    # The socket's lease was held for the turn, then dropped: the session ended.
    deadline = time.monotonic() + 5
    while (await session_of(client.session_id)).status != SessionStatus.ENDED:
        assert time.monotonic() < deadline, "the session never ended"
        await asyncio.sleep(0.05)


async def test_a_position_that_is_not_a_number_is_an_error_and_the_socket_works(avisitor):
    client = ChatClient(await avisitor())
    client.comm.scope["query_string"] = b"after=soon"
    await client.connect()
    frame = await client.receive()
    assert (frame["type"], frame["code"]) == ("error", "invalid_message")
    frames = await client.turn("hello")
    assert frames[-1]["type"] == "done"
    await client.close()


async def test_a_socket_joining_as_a_turn_finishes_is_not_sent_it_again(avisitor, fake_groq, monkeypatch):
    """Between the turn's release and the end of its stream (charging its tokens), the history already has it."""
    from chat import turns

    charged = asyncio.Event()
    charge = turns.token_budget_charge

    async def slow_charge(**kwargs):
        await charge(**kwargs)
        charged.set()
        await asyncio.sleep(1.0)

    monkeypatch.setattr(turns, "token_budget_charge", slow_charge)
    visitor = await avisitor()
    fake_groq.enqueue(text_reply("All of it."))
    first = ChatClient(visitor)
    await first.connect()
    frames = await first.turn("once")
    await charged.wait()
    again = ChatClient(visitor, session_id=first.session_id, after=seqs_of(frames)[0] - 1)
    session = await again.connect()
    assert session["turn_running"] is False and session["frame_seq"] == seqs_of(frames)[-1]
    assert [m["content"] for m in session["history"]] == ["once", "All of it."]
    assert await again.comm.receive_nothing(timeout=1.5)
    await first.close()
    await again.close()


async def test_a_message_on_a_session_its_owner_deleted_meanwhile_is_refused(avisitor):
    from audit import services

    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hello")
    await sync_to_async(services.session_delete_by_owner)(session_id=client.session_id)
    await client.send({"type": "message", "content": "still here?"})
    frame = await client.receive()
    assert (frame["type"], frame["code"]) == ("error", "forbidden")
    assert await client.comm.receive_output() == {"type": "websocket.close", "code": 4403}
    await client.close()
    # Nothing of the refused message was recorded.
    recorded = await sync_to_async(list)(Event.objects.filter(session_id=client.session_id).order_by("seq"))
    assert [(e.type, e.content) for e in recorded][0] == ("user_message", "hello") and len(recorded) == 2


async def test_a_follow_request_answered_after_its_unfollow_does_not_add_the_channel():
    """A socket of another process that asked to follow and left at once is not sent frames for good."""
    from chat.streams import Hub, Stream

    hub = Hub()
    stream = Stream(hub, uuid.uuid4(), base=0)
    stream.frames = [(n, "token", f'{{"type": "token", "content": "x", "frame_seq": {n}}}') for n in range(1, 4)]
    channel = await hub.layer.new_channel()
    stream.unfollowed.discard(channel)  # as the hub does when the request arrives
    following = asyncio.ensure_future(stream.remote_follow(channel, 0))
    stream.unfollow(channel=channel)  # handled before the replay ends
    await following
    assert channel not in stream.remote
    # Asked again later, it follows.
    stream.unfollowed.discard(channel)
    await stream.remote_follow(channel, 3)
    assert channel in stream.remote
    stream.end()
