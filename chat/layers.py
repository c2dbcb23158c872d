"""The channel layer on Redis: channels-redis, with a receive that outlives a Redis restart."""

import asyncio
import logging
import time
from typing import Any

from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_options import pool_options

logger = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# How long a command waits for a free connection when the pool is at its size, before raising.
# Under the 5 s the consumers give a group call (LAYER_TIMEOUT_SECONDS), so a pool that stays
# full fails with the pool's own error rather than a cancel in the middle of the wait.
POOL_WAIT_SECONDS = 4.0
CONNECT_TIMEOUT_SECONDS = 5.0


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

        The connections have no socket timeout unless the host sets one
        (redis-py's default of 5 s also cut the layer's blocking 5 s reads,
        channels_redis#422): see `chat.redis_options`. The callers bound
        their layer calls with `asyncio.timeout`.
        """
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)
        address = host.pop("address")
        options = {"timeout": POOL_WAIT_SECONDS, **pool_options(address, connect_timeout=CONNECT_TIMEOUT_SECONDS)}
        return BlockingConnectionPool.from_url(address, **{**options, **host})

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
