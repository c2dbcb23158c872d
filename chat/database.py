"""How the async side reaches the database: ORM functions run on a pool of threads.

Channels' `database_sync_to_async` runs every call of the process on one
shared thread. Under a burst of handshakes and turns that thread was the
bottleneck: a third of its time went to waiting on PostgreSQL's answers, one
socket's query after another. Here calls run on CHAT_DB_THREADS threads, so
the waits overlap; each borrows a connection from the process's pool for the
call and gives it back (see the DATABASES note in settings). A call closes stale
connections before and after it, as Channels' adapter does.
"""

import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import close_old_connections


class DatabaseThreads(Executor):
    """The threads database calls run on, started on first use (settings are not read at import)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=settings.CHAT_DB_THREADS, thread_name_prefix="database"
                    )
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)


database_threads = DatabaseThreads()


def _connections_closed_around(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `func` so stale connections are closed (given back to the pool) before and after it.

    Inside the call, not around it as Channels' adapter does: asgiref runs the
    function in a copied context whose connections the thread outside it
    does not see, so a close there left every connection checked out.
    """

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    return call


def database_async(func: Callable[..., Any]) -> SyncToAsync:
    """Return the async twin of a sync ORM function, run on the database threads."""
    return SyncToAsync(_connections_closed_around(func), thread_sensitive=False, executor=database_threads)
