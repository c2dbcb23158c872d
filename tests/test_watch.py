"""Staff watching a session live, through the channel layer."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from chat.consumers import watch_group

from .conftest import ORIGIN, ChatClient

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def watcher(visitor, session_id) -> WebsocketCommunicator:
    from llmbacker.asgi import application

    return WebsocketCommunicator(
        application, f"/ws/admin/sessions/{session_id}/watch/", headers=visitor.headers(ORIGIN)
    )


async def staff_visitor(avisitor, username="staff"):
    user = await sync_to_async(get_user_model().objects.create_user)(username, password="pw", is_staff=True)
    return await avisitor(user)


async def test_staff_watch_another_visitors_turn_live(avisitor):
    chat = ChatClient(await avisitor())
    await chat.connect()
    watch = watcher(await staff_visitor(avisitor), chat.session_id)
    assert (await watch.connect())[0]
    await asyncio.sleep(0.5)  # the watch request reaches the chat socket through the layer
    frames = await chat.turn("What time is it in Asia/Tokyo?")
    seen = []
    while not seen or seen[-1]["type"] != "done":
        seen.append(await watch.receive_json_from(timeout=5))
    assert seen[0] == {"type": "user_message", "content": "What time is it in Asia/Tokyo?", "frame_seq": 1}
    assert seen[1:] == frames
    await watch.disconnect()
    await chat.close()


async def test_only_staff_may_watch(avisitor):
    chat = ChatClient(await avisitor())
    await chat.connect()
    for visitor in (await avisitor(), await avisitor(await sync_to_async(get_user_model().objects.create_user)("ann"))):
        watch = watcher(visitor, chat.session_id)
        assert (await watch.connect())[0]
        assert await watch.receive_output() == {"type": "websocket.close", "code": 4403}
        await watch.disconnect()
    await chat.close()


async def test_an_unwatched_turn_sends_nothing_to_watchers(avisitor):
    """Without a live watch lease, the token stream costs no channel-layer traffic."""
    layer = get_channel_layer()
    listener = await layer.new_channel()
    chat = ChatClient(await avisitor())
    await chat.connect()
    await layer.group_add(watch_group(chat.session_id), listener)
    await chat.turn("hello there")
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.5):
            await layer.receive(listener)
    await layer.group_discard(watch_group(chat.session_id), listener)
    await chat.close()


async def test_a_layer_that_does_not_answer_closes_the_watch_and_is_left_on_leaving(avisitor, monkeypatch):
    """Each layer call of a watcher is bounded: a stalled layer gets a 4500 close, not a socket hung for good."""
    from chat import consumers

    layer = get_channel_layer()

    async def never(*args, **kwargs):
        await asyncio.Event().wait()

    monkeypatch.setattr(consumers, "LAYER_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(layer, "group_add", never)
    monkeypatch.setattr(layer, "group_discard", never)
    watch = watcher(await staff_visitor(avisitor), "8b3f6c1e-0d1f-4a0e-9c36-2a1f6f3e5d01")
    assert (await watch.connect())[0]
    assert await watch.receive_output(timeout=3) == {"type": "websocket.close", "code": 4500}
    await asyncio.wait_for(watch.wait(), timeout=3)  # the consumer ended, its group_discard given up on


async def test_a_failed_renewal_is_tried_again(avisitor, monkeypatch):
    from chat import consumers

    layer = get_channel_layer()
    sent = []
    real_group_send = layer.group_send

    async def fail_first(group, message):
        sent.append(message["type"])
        if len(sent) == 1:
            raise ConnectionError("layer away")
        await real_group_send(group, message)

    monkeypatch.setattr(consumers, "WATCH_RENEW_SECONDS", 0.1)
    monkeypatch.setattr(layer, "group_send", fail_first)
    watch = watcher(await staff_visitor(avisitor), "8b3f6c1e-0d1f-4a0e-9c36-2a1f6f3e5d02")
    assert (await watch.connect())[0]
    for _ in range(50):
        if len(sent) >= 3:
            break
        await asyncio.sleep(0.05)
    assert sent[:3] == ["watch.start"] * 3
    await watch.disconnect()
