"""Sessions that always end, turns that are always released, limits that span sockets: through the real ASGI app."""

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.utils import timezone

from audit import services as audit_services
from audit.models import ChatSession, EventType, SessionStatus, SocketLease
from chat import turns
from chat.consumers import SessionConsumer
from chat.presence import presence

from .conftest import ChatClient, events_of, text_of
from .fake_groq import text_reply

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


@sync_to_async
def session_of(session_id) -> ChatSession:
    return ChatSession.objects.get(pk=session_id)


@sync_to_async
def leases_of(session_id) -> list[SocketLease]:
    return list(SocketLease.objects.filter(session_id=session_id))


async def test_a_socket_holds_a_lease_while_open_and_drops_it_on_close(avisitor):
    client = ChatClient(await avisitor())
    await client.connect()
    [lease] = await leases_of(client.session_id)
    assert lease.expires_at > timezone.now() and lease.visitor.startswith("anon:")
    assert lease.id in presence.leases
    await client.close()
    assert await leases_of(client.session_id) == []
    assert lease.id not in presence.leases
    # Nothing was said: the session went with its last socket (see test_consumer).
    assert await sync_to_async(ChatSession.objects.filter(pk=client.session_id).exists)() is False


async def test_a_consumer_that_raises_still_leaves_its_session(avisitor, monkeypatch):
    """An exception escaping a handler ends the consumer (daphne closes with 1011); the cleanup still runs."""
    client = ChatClient(await avisitor())
    await client.connect()
    await client.turn("hello")

    async def broken_receive(self, text_data=None, bytes_data=None):
        raise RuntimeError("a bug in a handler")

    monkeypatch.setattr(SessionConsumer, "receive", broken_receive)
    await client.send({"type": "ping"})
    with pytest.raises(RuntimeError, match="a bug in a handler"):
        await client.comm.receive_output(timeout=10)
    assert await leases_of(client.session_id) == []
    session = await session_of(client.session_id)
    assert session.status == SessionStatus.ENDED and session.turn_lease is None


async def test_an_error_inside_frame_handling_is_an_internal_error_and_the_socket_stays(avisitor, monkeypatch):
    client = ChatClient(await avisitor())
    await client.connect()

    async def broken_message(self, content):
        raise RecursionError("maximum recursion depth exceeded")

    with monkeypatch.context() as patch:
        patch.setattr(SessionConsumer, "_message", broken_message)
        await client.send({"type": "message", "content": "hi"})
        frame = await client.receive()
        assert (frame["type"], frame["code"]) == ("error", "internal")
    assert text_of(await client.turn("hi again"))
    await client.close()


async def test_a_reply_whose_write_failed_after_committing_is_recorded_once(avisitor, fake_groq, monkeypatch, settings):
    """The connection drops right after the commit: the retry finds the reply and does not write it again."""
    settings.CHAT_DB_RETRY_SECONDS = 5
    record = turns.event_record
    failed: list[str] = []

    async def commit_then_drop(**kwargs):
        event = await record(**kwargs)
        if kwargs["type"] == EventType.ASSISTANT_MESSAGE and not failed:
            failed.append(kwargs["data"]["turn_id"])
            raise OperationalError("server closed the connection unexpectedly")
        return event

    monkeypatch.setattr(turns, "event_record", commit_then_drop)
    fake_groq.enqueue(text_reply("Saved once."))
    client = ChatClient(await avisitor())
    await client.connect()
    frames = await client.turn("save me")
    assert [f["type"] for f in frames if f["type"] != "token"] == ["done"]
    events = await events_of(client.session_id)
    assert [(e.seq, e.type) for e in events] == [(1, "user_message"), (2, "assistant_message")]
    assert events[1].content == "Saved once." and events[1].data["turn_id"] == failed[0]
    await client.close()


async def test_a_database_blip_at_the_end_of_a_turn_loses_nothing_and_frees_the_turn(
    avisitor, fake_groq, monkeypatch, settings
):
    settings.CHAT_DB_RETRY_SECONDS = 5
    record, release = turns.event_record, turns.turn_release
    outage = {"record": 2, "release": 2}

    async def flaky_record(**kwargs):
        if kwargs["type"] == EventType.ASSISTANT_MESSAGE and outage["record"]:
            outage["record"] -= 1
            raise OperationalError("the database system is starting up")
        return await record(**kwargs)

    async def flaky_release(**kwargs):
        if outage["release"]:
            outage["release"] -= 1
            raise OperationalError("connection refused")
        return await release(**kwargs)

    monkeypatch.setattr(turns, "event_record", flaky_record)
    monkeypatch.setattr(turns, "turn_release", flaky_release)
    fake_groq.enqueue(text_reply("Kept through the blip."), text_reply("Next."))
    client = ChatClient(await avisitor())
    await client.connect()
    assert text_of(await client.turn("during a blip")) == "Kept through the blip."
    assert outage == {"record": 0, "release": 0}
    session = await session_of(client.session_id)
    assert session.turn_started_at is None and session.turn_lease is None
    events = await events_of(client.session_id)
    assert [e.type for e in events] == ["user_message", "assistant_message"]
    assert events[1].content == "Kept through the blip."
    assert text_of(await client.turn("after")) == "Next."
    await client.close()


async def test_a_turn_whose_release_failed_for_good_is_free_for_its_own_socket(
    avisitor, fake_groq, monkeypatch, settings
):
    settings.CHAT_DB_RETRY_SECONDS = 0.3

    async def release_down(**kwargs):
        raise OperationalError("connection refused")

    fake_groq.enqueue(text_reply("First."), text_reply("Second."))
    visitor = await avisitor()
    client = ChatClient(visitor)
    await client.connect()
    with monkeypatch.context() as patch:
        patch.setattr(turns, "turn_release", release_down)
        assert text_of(await client.turn("one")) == "First."
    assert (await session_of(client.session_id)).turn_lease is not None
    # Another tab of the session is told busy while the claim's socket lives...
    tab = ChatClient(visitor, session_id=client.session_id)
    assert (await tab.connect())["turn_running"] is True
    # The row says a turn runs here, but none does: the tab is told it cannot follow it.
    assert (await tab.receive())["code"] == "reply_unavailable"
    await tab.send({"type": "message", "content": "from the other tab"})
    frame = await tab.receive()
    assert (frame["type"], frame["code"]) == ("error", "busy")
    await tab.close()
    # ...while the socket that holds it may go on.
    assert text_of(await client.turn("two")) == "Second."
    await client.close()


async def test_a_turn_claimed_by_a_vanished_socket_is_taken_over(avisitor, fake_groq):
    """A daphne that crashed mid-reply: its lease runs out, and the claim with it."""
    visitor = await avisitor()
    client = ChatClient(visitor)
    await client.connect()
    crashed_lease = timezone.now()

    @sync_to_async
    def crash_mid_turn() -> uuid.UUID:
        lease = SocketLease.objects.create(
            session_id=client.session_id, visitor="anon:gone", expires_at=crashed_lease + timedelta(seconds=30)
        )
        ChatSession.objects.filter(pk=client.session_id).update(turn_started_at=crashed_lease, turn_lease=lease.pk)
        audit_services.event_record(
            session_id=client.session_id, type=EventType.USER_MESSAGE, content="lost?", data={"turn_id": "t1"}
        )
        return lease.pk

    lease_id = await crash_mid_turn()
    await client.send({"type": "message", "content": "anyone?"})
    frame = await client.receive()
    assert (frame["type"], frame["code"]) == ("error", "busy")
    await sync_to_async(SocketLease.objects.filter(pk=lease_id).update)(expires_at=timezone.now())
    fake_groq.enqueue(text_reply("Taken over."))
    assert text_of(await client.turn("anyone now?")) == "Taken over."
    events = await events_of(client.session_id)
    assert [(e.seq, e.type, e.content) for e in events] == [
        (1, "user_message", "lost?"),
        (2, "assistant_message", ""),  # the crashed turn's reply, of which nothing survived
        (3, "user_message", "anyone now?"),
        (4, "assistant_message", "Taken over."),
    ]
    assert (events[1].data["turn_id"], events[1].data["stop_reason"]) == ("t1", "server_lost")
    await client.close()


async def test_a_visitor_may_hold_only_so_many_sockets(avisitor, settings):
    settings.CHAT_MAX_SOCKETS_PER_VISITOR = 2
    visitor = await avisitor()
    first, second = ChatClient(visitor), ChatClient(visitor)
    await first.connect()
    await second.connect()
    third = ChatClient(visitor)
    connected, _ = await third.comm.connect()
    assert connected
    frame = await third.receive()
    assert (frame["type"], frame["code"]) == ("error", "too_many_connections")
    assert await third.comm.receive_output() == {"type": "websocket.close", "code": 4429}
    # Someone else is not affected, and a socket closed makes room.
    stranger = ChatClient(await avisitor())
    await stranger.connect()
    await first.close()
    again = ChatClient(visitor)
    await again.connect()
    for client in (second, stranger, again):
        await client.close()


async def test_the_message_limit_counts_every_socket_of_a_visitor(avisitor, settings):
    settings.CHAT_RATE_LIMIT_MESSAGES = 2
    visitor = await avisitor()
    tab_a, tab_b = ChatClient(visitor), ChatClient(visitor)
    await tab_a.connect()
    await tab_b.connect()
    await tab_a.turn("one")
    await tab_b.turn("two")
    await tab_b.send({"type": "message", "content": "three"})
    frame = await tab_b.receive()
    assert (frame["type"], frame["code"]) == ("error", "rate_limited")
    assert frame["retry_after"] > 0
    await tab_a.close()
    await tab_b.close()


async def test_a_visitor_over_the_daily_token_budget_is_refused(avisitor, fake_groq, settings):
    settings.CHAT_TOKEN_BUDGET_PER_DAY = 30
    fake_groq.enqueue(text_reply("Costly.", usage=(20, 15)))
    client = ChatClient(await avisitor())
    await client.connect()
    assert text_of(await client.turn("spend")) == "Costly."
    await client.send({"type": "message", "content": "more"})
    frame = await client.receive()
    assert (frame["type"], frame["code"]) == ("error", "token_budget_exceeded")
    assert 0 < frame["retry_after"] <= 86_400
    events = await events_of(client.session_id)
    assert [e.content for e in events if e.type == "user_message"] == ["spend"]
    await client.close()


async def test_leases_are_renewed_while_the_socket_is_open(avisitor, settings):
    settings.CHAT_SOCKET_LEASE_SECONDS = 0.6  # renewed every 0.2 s
    client = ChatClient(await avisitor())
    await client.connect()
    [before] = await leases_of(client.session_id)
    await asyncio.sleep(1.5)
    [after] = await leases_of(client.session_id)
    assert after.expires_at > before.expires_at and after.expires_at > timezone.now()
    await client.close()


async def test_without_a_broker_the_process_holding_sockets_runs_the_sweep(avisitor, settings, monkeypatch):
    """The embedded default has no beat: a session a crash left open is still ended."""
    from chat import presence as presence_module

    settings.CHAT_SOCKET_LEASE_SECONDS = 0.3
    monkeypatch.setattr(presence_module, "LOCAL_SWEEP_SECONDS", 0.2)

    @sync_to_async
    def crashed_session() -> ChatSession:
        session = ChatSession.objects.create(anon_key="gone", model="m")
        audit_services.event_record(session_id=session.id, type=EventType.USER_MESSAGE, content="cut off")
        ChatSession.objects.filter(pk=session.pk).update(last_activity_at=timezone.now() - timedelta(minutes=5))
        return session

    crashed = await crashed_session()
    client = ChatClient(await avisitor())
    await client.connect()
    for _ in range(50):
        if (await session_of(crashed.id)).status == SessionStatus.ENDED:
            break
        await asyncio.sleep(0.1)
    assert (await session_of(crashed.id)).status == SessionStatus.ENDED
    assert (await session_of(client.session_id)).status == SessionStatus.ACTIVE
    await client.close()


async def test_calls_fail_at_once_for_a_moment_after_the_database_was_found_down(monkeypatch):
    """With the database down each call would wait the pool's timeout, holding the thread all sockets share."""
    from django.db import OperationalError as DatabaseError

    from chat.database import DatabaseDown, database_async

    calls: list[str] = []
    probe = database_async(lambda: calls.append("ran"))
    monkeypatch.setattr(DatabaseDown, "until", 0.0)
    await probe()
    monkeypatch.setattr(DatabaseDown, "until", time.monotonic() + 60)
    with pytest.raises(DatabaseError, match="unreachable"):
        await probe()
    monkeypatch.setattr(DatabaseDown, "until", time.monotonic() - 1)
    await probe()
    assert calls == ["ran", "ran"]


async def test_a_reply_the_database_refuses_is_replaced_by_an_empty_one_when_the_turn_is_released(
    avisitor, fake_groq, monkeypatch
):
    """Every user message keeps one assistant event, even when its reply could not be written."""
    from django.db import DataError

    record = turns.event_record

    async def reply_refused(**kwargs):
        if kwargs["type"] == EventType.ASSISTANT_MESSAGE:
            raise DataError("invalid byte sequence")
        return await record(**kwargs)

    fake_groq.enqueue(text_reply("Lost."), text_reply("Kept."))
    client = ChatClient(await avisitor())
    await client.connect()
    with monkeypatch.context() as patch:
        patch.setattr(turns, "event_record", reply_refused)
        frames = await client.turn("first")
    assert [(f["type"], f.get("code")) for f in frames if f["type"] != "token"] == [
        ("error", "internal"),
        ("done", None),
    ]
    assert text_of(await client.turn("second")) == "Kept."
    events = await events_of(client.session_id)
    assert [(e.type, e.content, e.data.get("stop_reason")) for e in events] == [
        ("user_message", "first", None),
        ("assistant_message", "", "not_recorded"),
        ("user_message", "second", None),
        ("assistant_message", "Kept.", None),
    ]
    await client.close()
