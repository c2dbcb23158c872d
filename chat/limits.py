"""Message rate limits per visitor and per client address, and a daily token budget per visitor.

The counts live in storage of the `limits` library: Redis when `REDIS_URL` is
set, so every socket and every server process of one visitor draws on the same
windows; otherwise the memory of this process (its event loop, see
`limits_storage`).

- Messages: a moving window of `CHAT_RATE_LIMIT_WINDOW_SECONDS` (whole
  seconds, at least 1) per visitor (`CHAT_RATE_LIMIT_MESSAGES`) and per client
  address (`CHAT_RATE_LIMIT_ADDRESS_MESSAGES`).
- Tokens: prompt plus completion tokens per visitor per UTC day
  (`CHAT_TOKEN_BUDGET_PER_DAY`), counted in a fixed window keyed by the date.
  A turn that starts under the budget runs to its end, so a visitor can go
  over by at most one turn.

Each limit is off when set to 0. The library's keys name the limit's amount
and window, so changing a setting starts its counts afresh.

When the storage fails (Redis down, refusing or slower than
`REDIS_TIMEOUT_SECONDS`), the limits fail open: the message or the turn goes
ahead and a WARNING is logged. An outage of the limiter should not take the
chat down with it; the model provider's own rate limits still hold.
"""

import asyncio
import logging
import math
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio
from django.conf import settings
from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError

from .redis_options import pool_options

logger = logging.getLogger(__name__)

# Keys of the limits in the shared Redis database start with this, apart from the channel layer's and Celery's.
KEY_PREFIX = "llmbacker-limits"
# Every message waits on the storage: a Redis that hangs should cost a second, not redis-py's default 5 s.
# It bounds each check with `asyncio.timeout`, not with a socket timeout (see chat.redis_options).
REDIS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class Refusal:
    """Why a message or a turn was refused, and when to try again."""

    code: str
    message: str
    retry_after: float


@dataclass(frozen=True)
class _Limiters:
    """One storage with the strategies over it, and the Redis connections to close with it."""

    storage: Storage
    messages: MovingWindowRateLimiter
    tokens: FixedWindowRateLimiter
    pool: redis.asyncio.ConnectionPool | None


# An asyncio Redis connection belongs to the loop that opened it: one set per running loop (daphne has one,
# tests open one per test), and per URL, so a changed REDIS_URL gets its own.
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Limiters]] = weakref.WeakKeyDictionary()


def _limiters_build(*, url: str) -> _Limiters:
    """Build the storage for `url` (memory when empty) and the strategies over it."""
    pool = None
    if url:
        # A pool of its own: no retries with back-off (a failure fails open at once) and a short timeout.
        # Sized like the channel layer's, and like it waiting for a free connection when all are
        # taken (briefly: then the limit fails open): redis-py's plain pool raised at once on a
        # burst of messages, and every limit then failed open.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=REDIS_TIMEOUT_SECONDS,
            **pool_options(url, connect_timeout=REDIS_TIMEOUT_SECONDS),
        )
        # The URI only picks redis-py over coredis and valkey here; the pool carries the address.
        uri = "async+redis+unix" + url.removeprefix("unix") if url.startswith("unix:") else "async+" + url
        storage: Storage = RedisStorage(
            uri,
            implementation="redispy",
            key_prefix=KEY_PREFIX,
            wrap_exceptions=True,
            # Passed on to redis-py; limits types its options as plain values.
            connection_pool=pool,  # type: ignore[arg-type]
        )
    else:
        storage = MemoryStorage(wrap_exceptions=True)
    return _Limiters(
        storage=storage,
        messages=MovingWindowRateLimiter(storage),
        tokens=FixedWindowRateLimiter(storage),
        pool=pool,
    )


def limits_storage() -> Storage:
    """Return the running event loop's storage for the limits, building it on first use."""
    return _limiters_get().storage


def _limiters_get() -> _Limiters:
    url = settings.REDIS_URL
    per_url = _limiters.setdefault(asyncio.get_running_loop(), {})
    if url not in per_url:
        per_url[url] = _limiters_build(url=url)
    return per_url[url]


async def limits_storage_close() -> None:
    """Close the running event loop's Redis connections for the limits; the next call opens new ones."""
    for limiters in _limiters.pop(asyncio.get_running_loop(), {}).values():
        if limiters.pool is not None:
            await limiters.pool.disconnect()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _seconds_text(seconds: float) -> str:
    """Return a duration the way a person says it: "42 s", "7 min", "5 h 12 min"."""
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _window_seconds() -> int:
    # The library counts whole seconds (Redis expiries are integers).
    return max(1, math.ceil(settings.CHAT_RATE_LIMIT_WINDOW_SECONDS))


async def _message_refusal(
    *, limiters: _Limiters, item: RateLimitItem, identifiers: tuple[str, str], who: str
) -> Refusal:
    """Build the refusal of a full message window, with the seconds until its oldest message leaves it."""
    stats = await limiters.messages.get_window_stats(item, *identifiers)
    retry_after = max(0.0, math.ceil((stats.reset_time - time.time()) * 10) / 10)
    return Refusal(
        code="rate_limited",
        message=(
            f"Too many messages{who} (at most {item.amount} every {item.get_expiry()} s);"
            f" try again in {_seconds_text(retry_after)}."
        ),
        retry_after=retry_after,
    )


async def message_allow(*, visitor: str, address: str) -> Refusal | None:
    """Count one user message against the visitor's and the address's windows; None when allowed.

    An empty `address` (unknown client) is counted for the visitor only.
    """
    window = _window_seconds()
    visitor_limit, address_limit = settings.CHAT_RATE_LIMIT_MESSAGES, settings.CHAT_RATE_LIMIT_ADDRESS_MESSAGES
    by_visitor = RateLimitItemPerSecond(visitor_limit, window, namespace="messages") if visitor_limit > 0 else None
    by_address = (
        RateLimitItemPerSecond(address_limit, window, namespace="messages") if address_limit > 0 and address else None
    )
    visitor_key, address_key = ("visitor", visitor), ("address", address)
    try:
        limiters = _limiters_get()
        async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
            # The address is tested before the visitor's message is counted, so a message refused for a
            # crowded address does not also use up the visitor's own window.
            if by_address and not await limiters.messages.test(by_address, *address_key):
                return await _message_refusal(
                    limiters=limiters, item=by_address, identifiers=address_key, who=" from your network"
                )
            if by_visitor and not await limiters.messages.hit(by_visitor, *visitor_key):
                return await _message_refusal(limiters=limiters, item=by_visitor, identifiers=visitor_key, who="")
            if by_address and not await limiters.messages.hit(by_address, *address_key):
                return await _message_refusal(
                    limiters=limiters, item=by_address, identifiers=address_key, who=" from your network"
                )
    except (StorageError, TimeoutError) as exc:
        logger.warning("rate limit storage failed, message of %s from %s let through: %r", visitor, address, exc)
    return None


def _token_item(*, budget: int) -> RateLimitItem:
    # The date is part of the key, so the window is the UTC day; the day-long expiry only clears the key away.
    return RateLimitItemPerDay(budget, namespace="tokens")


async def token_budget_check(*, visitor: str) -> Refusal | None:
    """Refuse when the visitor has used up today's token budget."""
    budget = settings.CHAT_TOKEN_BUDGET_PER_DAY
    if budget <= 0:
        return None
    now = _utc_now()
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
            allowed = await _limiters_get().tokens.test(_token_item(budget=budget), visitor, now.date().isoformat())
        if allowed:
            return None
    except (StorageError, TimeoutError) as exc:
        logger.warning("token budget storage failed, turn of %s let through: %r", visitor, exc)
        return None
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    retry_after = math.ceil((tomorrow - now).total_seconds())
    return Refusal(
        code="token_budget_exceeded",
        message=(
            f"Today's budget of {budget:,} tokens is used up; it renews at midnight UTC,"
            f" in {_seconds_text(retry_after)}."
        ),
        retry_after=float(retry_after),
    )


async def token_budget_charge(*, visitor: str, tokens: int) -> None:
    """Add a finished turn's tokens to the visitor's budget for today."""
    budget = settings.CHAT_TOKEN_BUDGET_PER_DAY
    if budget <= 0 or tokens <= 0:
        return
    try:
        # A hit over the budget is refused but still counted: the tokens were spent.
        async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
            await _limiters_get().tokens.hit(
                _token_item(budget=budget), visitor, _utc_now().date().isoformat(), cost=tokens
            )
    except (StorageError, TimeoutError) as exc:
        logger.warning("token budget storage failed, %d tokens of %s not counted: %r", tokens, visitor, exc)
