"""Options for the asyncio Redis pools of the channel layer and the limits: calls that a cancel always reaches.

No socket timeout. With one, redis-py sends every command through
`asyncio.wait_for`, which on Python 3.11 drops a cancel that arrives in the
same step of the event loop as the send's end (fixed in 3.12). A lost cancel
left a channel layer receive reading for good, and Channels waits for its
cancelled receive before a consumer ends, so that socket's cleanup never ran.
The callers bound their calls with `asyncio.timeout` instead.

No maintenance notifications. redis-py 8 asks for them on every new
connection (one more round trip), and during a maintenance it sets a relaxed
socket timeout on the connections, which would bring `wait_for` back.

TCP keepalive with short probes, and a limit on unacknowledged sends, so a
Redis host that vanishes without closing its connections (a host gone, a
network cut) is noticed in ~30 s rather than the kernel's hours. Unix socket
connections take neither.
"""

import socket
from typing import Any

from redis.maint_notifications import MaintNotificationsConfig

# Probes after 15 s idle, every 5 s, 3 unanswered; sent data unacknowledged for 30 s (Linux names; none elsewhere).
KEEPALIVE_OPTIONS = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 15),
        (getattr(socket, "TCP_KEEPINTVL", None), 5),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
        (getattr(socket, "TCP_USER_TIMEOUT", None), 30_000),
    )
    if option is not None
}


def pool_options(url: str, *, connect_timeout: float) -> dict[str, Any]:
    """Return the connection options for a pool on `url` (see the module's docstring)."""
    options: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": connect_timeout,
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True
        options["socket_keepalive_options"] = KEEPALIVE_OPTIONS
    return options
