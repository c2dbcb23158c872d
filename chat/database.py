"""How the async side reaches the database: ORM functions on one thread that keeps its connection.

Calls run where Channels' `database_sync_to_async` runs them, on asgiref's
one shared thread. Spreading them over several threads was measured with
`make bench-load`: the waits on PostgreSQL overlapped, but the threads'
contention for the interpreter cost more CPU than that saved (1,000 sockets:
~5 ms of CPU per handshake against ~3.5 ms). The thread keeps its
connection, borrowed from the process's pool, between calls, since borrowing
one per call (with its health check) also cost more than the calls it served;
a connection that broke (a database restart) fails one query, which the
chat's writes retry, and is replaced before the next call.
"""

import functools
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import SyncToAsync
from django.db import OperationalError, connection, connections

# After a call could not reach the database, calls fail at once for this long.
DOWN_FAIL_FAST_SECONDS = 2.0


class DatabaseDown:
    """When the database was last found unreachable, so calls meanwhile fail fast.

    All calls share one thread, and with the database down each waits the
    pool's timeout for a connection: a burst of retried writes would hold the
    thread for many seconds, and the handshakes queued behind them (their
    user lookup runs on the same thread) would miss daphne's 5 s deadline.
    """

    until = 0.0

    @classmethod
    def check(cls) -> None:
        """Raise OperationalError at once while the database is known to be down."""
        if time.monotonic() < cls.until:
            raise OperationalError("the database is unreachable; not trying again for a few seconds")

    @classmethod
    def note(cls) -> None:
        """Remember that a call could not get a connection."""
        if connection.connection is None:
            cls.until = time.monotonic() + DOWN_FAIL_FAST_SECONDS


def _connections_checked() -> None:
    """Drop this thread's connections that failed since their last use; keep the healthy ones."""
    for wrapper in connections.all(initialized_only=True):
        if wrapper.connection is None:
            continue
        if wrapper.in_atomic_block or not wrapper.get_autocommit():
            wrapper.close()  # left mid-transaction: never reuse it
        elif wrapper.errors_occurred:
            if wrapper.is_usable():
                wrapper.errors_occurred = False
            else:
                wrapper.close()


def _connection_checked_first(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `func` to check the thread's connections first, inside the call's context where they live.

    Not around the call, as Channels' adapter does: asgiref runs the function
    in a copied context whose connections the code outside it does not see.
    """

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        DatabaseDown.check()
        _connections_checked()
        try:
            return func(*args, **kwargs)
        except OperationalError:
            DatabaseDown.note()
            raise

    return call


def database_async(func: Callable[..., Any]) -> SyncToAsync:
    """Return the async twin of a sync ORM function, run on the database thread."""
    return SyncToAsync(_connection_checked_first(func), thread_sensitive=True)
