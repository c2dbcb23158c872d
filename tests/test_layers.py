"""The Redis channel layer's receive: waits Redis out, yet ends when its task is cancelled."""

import asyncio

import pytest
from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer
from redis.exceptions import ConnectionError as RedisConnectionError

from chat.layers import RedisChannelLayer

from .conftest import on_redis, service_missing

pytestmark = pytest.mark.asyncio


async def test_a_cancel_that_surfaces_as_a_connection_error_still_ends_the_receive(monkeypatch):
    """Closing the connection under a cancelled read raises ConnectionError, not CancelledError.

    The receive must not take that for an outage and retry forever: a loop
    shutting down (daphne's, or a test's) would wait on it for good.
    """
    reading = asyncio.Event()

    async def read_cut_by_the_cancel(self, channel):
        reading.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RedisConnectionError("Connection closed by server.") from None

    monkeypatch.setattr(BaseRedisChannelLayer, "receive", read_cut_by_the_cancel)
    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:1/0"])
    receiving = asyncio.create_task(layer.receive("specific.x!y"))
    await reading.wait()
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(receiving, timeout=2)


async def test_an_outage_is_waited_out(monkeypatch):
    calls = []

    async def down_then_up(self, channel):
        calls.append(channel)
        if len(calls) < 3:
            raise RedisConnectionError("Connection refused")
        return {"type": "hello"}

    monkeypatch.setattr(BaseRedisChannelLayer, "receive", down_then_up)
    monkeypatch.setattr("chat.layers.RETRY_FIRST_SECONDS", 0.01)
    layer = RedisChannelLayer(hosts=["redis://127.0.0.1:1/0"])
    assert await asyncio.wait_for(layer.receive("specific.x!y"), timeout=5) == {"type": "hello"}
    assert len(calls) == 3


async def test_a_receive_on_the_configured_layer_ends_on_a_cancel_at_every_step(settings):
    """A cancel reaches the receive wherever it is: connecting, sending, reading.

    Channels cancels a consumer's receive once when its socket closes and
    waits for it before the consumer's cleanup runs. With a socket timeout,
    redis-py sent each command through `asyncio.wait_for`, which on Python
    3.11 drops a cancel arriving in the loop step its send ends in: the
    receive then read on for good (a test's loop hung at its close). Every
    step of the receive's first reads gets a cancel, on the layer as the
    settings configure it.
    """
    if not on_redis():
        service_missing("REDIS_URL is not set: the Redis channel layer is not in use")
    layer = RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])
    channel = await layer.new_channel()
    try:
        for steps in range(80):
            receiving = asyncio.create_task(layer.receive(channel))
            for _ in range(steps):
                await asyncio.sleep(0)
            receiving.cancel()
            await asyncio.wait([receiving], timeout=5)
            assert receiving.cancelled(), f"the cancel after {steps} steps was lost: {receiving}"
        await layer.send(channel, {"type": "still.working"})
        assert await asyncio.wait_for(layer.receive(channel), timeout=5) == {"type": "still.working"}
    finally:
        await layer.flush()


async def test_a_unix_socket_address_carries_messages(unix_redis):
    """Keepalive is a TCP option: a layer on a Unix socket gets none (redis-py's Unix connection refuses it)."""
    layer = RedisChannelLayer(hosts=[{"address": unix_redis}])
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "over.unix"})
    assert await asyncio.wait_for(layer.receive(channel), timeout=5) == {"type": "over.unix"}
    await layer.flush()
