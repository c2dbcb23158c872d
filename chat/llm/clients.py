"""HTTP clients kept per event loop: building one costs ~20 ms of CPU (its SSL context).

A client holds connections bound to the loop it was first used on, hence the
key; a loop that goes away takes its clients with it.
"""

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

Client = TypeVar("Client")

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


def client_for_loop(options: tuple, make: Callable[[], Client]) -> Client:
    """Return this loop's client for these options, made by `make` the first time."""
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    if options not in per_loop:
        per_loop[options] = make()
    return per_loop[options]
