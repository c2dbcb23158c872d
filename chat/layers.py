"""The channel layer on Redis: channels-redis, with a receive that outlives a Redis restart."""

import asyncio
import logging
import socket
import time
from typing import Any

from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# How long a command waits for a free connection when the pool is at its size, before raising.
# Under the 5 s the consumers give a group call (LAYER_TIMEOUT_SECONDS), so a pool that stays
# full fails with the pool's own error rather than a cancel in the middle of the wait.
POOL_WAIT_SECONDS = 4.0
CONNECT_TIMEOUT_SECONDS = 5.0
# A Redis that vanished without closing its connections (a host gone, a network cut) is noticed
# after ~30 s of silence: probes after 15 s idle, every 5 s, 3 unanswered (Linux names; none elsewhere).
KEEPALIVE_OPTIONS = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 15),
        (getattr(socket, "TCP_KEEPINTVL", None), 5),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}


class RedisChannelLayer(BaseRedisChannelLayer):
    """channels-redis, whose receive waits for Redis to come back instead of raising.

    Every consumer's dispatch loop awaits `receive` on the layer; when it
    raises, Channels ends the consumer and daphne closes its socket with 1011.
    A Redis restart of a second used to close every socket that way. Here the
    receive retries with backoff, so the sockets stay open and the chat
    (which needs the layer only for group messages) goes on. Messages sent
    through the layer while Redis was away are lost, as they would be anyway.
    """

    # Set while Redis is away, so an outage is logged once, not once per socket.
    receive_failing = False

    def create_pool(self, index: int) -> Any:
        """Return a pool that, at its size, waits for a free connection rather than raising.

        channels-redis's pool raises MaxConnectionsError once its size is
        reached (a burst of closing sockets did that), and below its size
        opens a new connection for every command that finds none free: under
        a burst of handshakes that was hundreds of new connections, each a
        TCP connect and a CLIENT SETINFO. `max_connections` in the host's
        settings is the size.

        The connections have no socket timeout unless the host sets one.
        redis-py defaults to 5 s, which cut the layer's blocking 5 s reads
        (channels_redis#422); and with any socket timeout it sends each
        command through `asyncio.wait_for`, which on Python 3.11 loses a
        cancel that arrives in the same step of the loop as the send's end
        (fixed in 3.12). A lost cancel left a receive reading for good, and
        Channels waits for its cancelled receive before a consumer ends, so
        the socket's `disconnect` cleanup never ran. The layer's own calls
        are bounded by the callers (`asyncio.timeout`); a peer that vanishes
        without closing the connection is found by TCP keepalive.
        """
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)
        host.setdefault("timeout", POOL_WAIT_SECONDS)
        host.setdefault("socket_timeout", None)
        host.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_SECONDS)
        host.setdefault("socket_keepalive", True)
        host.setdefault("socket_keepalive_options", KEEPALIVE_OPTIONS)
        return BlockingConnectionPool.from_url(host.pop("address"), **host)

    async def group_add(self, group: str, channel: str) -> None:
        """Add the channel to the group in one round trip (channels-redis sends its two commands one by one)."""
        assert self.require_valid_group_name(group), "Group name not valid"  # noqa: S101
        assert self.require_valid_channel_name(channel), "Channel name not valid"  # noqa: S101
        group_key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        async with connection.pipeline(transaction=False) as pipe:
            pipe.zadd(group_key, {channel: time.time()})
            pipe.expire(group_key, self.group_expiry)
            await pipe.execute()

    async def receive(self, channel: str) -> dict:
        """Return the next message on the channel, waiting out Redis outages."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                message = await super().receive(channel)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # A cancel that closed the connection under the read surfaces as a connection
                    # error: it is still a cancel (a retry here would never end the task).
                    raise asyncio.CancelledError from exc
                if not self.receive_failing:
                    self.receive_failing = True
                    logger.warning("channel layer: Redis is unreachable (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            if self.receive_failing:
                self.receive_failing = False
                logger.warning("channel layer: Redis is back")
            return message
