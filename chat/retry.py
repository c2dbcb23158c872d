"""Database writes that must survive a blip: the reply, the turn's release, a socket's leave."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

from django.conf import settings
from django.db import InterfaceError, OperationalError

from .database import DatabaseDown

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 2.0

# The errors of a database that is away (restarting, unreachable, connection
# dropped), as opposed to a bad query, which no retry fixes.
TRANSIENT = (OperationalError, InterfaceError)


async def database_retry(
    call: Callable[..., Awaitable[T]],
    *,
    what: str,
    session_id: UUID,
    retry_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> T:
    """Await `call(session_id=session_id, **kwargs)`, again with backoff while the database is away.

    Tries go on for CHAT_DB_RETRY_SECONDS.

    Each try runs through `database_sync_to_async`, which drops a connection
    that failed, so the next try connects afresh. `retry_kwargs` are added
    from the second try on (an event write is told it may have committed).
    What still fails is logged with the session id and raised.
    """
    deadline = time.monotonic() + settings.CHAT_DB_RETRY_SECONDS
    delay = RETRY_FIRST_SECONDS
    tries = 0
    while True:
        tries += 1
        try:
            result = await call(session_id=session_id, **kwargs)
        except TRANSIENT as exc:
            # A try inside the fail-fast window is not a real one: wait the window out.
            delay = max(delay, DatabaseDown.until - time.monotonic())
            if time.monotonic() + delay > deadline:
                logger.error("could not %s for session %s after %d tries: %s", what, session_id, tries, exc)
                raise
            logger.warning("could not %s for session %s (%s); retrying", what, session_id, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            kwargs.update(retry_kwargs or {})
            continue
        if tries > 1:
            logger.warning("%s for session %s succeeded after %d tries", what, session_id, tries)
        return result
