"""Keep autobahn from formatting its debug messages for every WebSocket handshake when nobody reads them.

autobahn (daphne's WebSocket layer) builds two `pprint.pformat` strings for
every connection it accepts, as arguments of `log.debug` calls, whether or
not debug logging is on: about 0.3 ms of CPU per handshake here (its
configuration, 29 attributes, and the transport's details), some 7% of what
accepting a chat socket costs (see the README, "Benchmark"). The module's
`pformat` is replaced with one that returns a value formatted only when a
log line is actually written; the one place that needs the string at once
(`Timings.__str__`) gets the real function. Nothing changes when debug
logging is on. Applied once, from `llmbacker.asgi`, and only when autobahn
still has the names this relies on.
"""

import logging
import pprint
from typing import Any

logger = logging.getLogger(__name__)


class _Formatted:
    """A value shown with `pprint.pformat` when (and only when) a log line turns it into text."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def lazy_pformat_install() -> bool:
    """Install the lazy `pformat` in autobahn's WebSocket protocol module; return whether it was."""
    try:
        from autobahn.websocket import protocol
    except ImportError:
        return False
    current, timings = getattr(protocol, "pformat", None), getattr(protocol, "Timings", None)
    if current is _Formatted:
        return True  # installed already
    if current is not pprint.pformat or timings is None:
        logger.warning("autobahn changed: its debug messages are formatted eagerly again")
        return False
    timings.__str__ = lambda self: pprint.pformat(self._timings)
    protocol.pformat = _Formatted  # type: ignore[assignment]  # a stand-in that formats only when printed
    return True
