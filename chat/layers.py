"""The channel layer on Redis: channels-redis, with a receive that outlives a Redis restart."""

import asyncio
import logging

from channels_redis.core import RedisChannelLayer as BaseRedisChannelLayer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0


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
