"""This process's live sockets, whose leases it renews together so "connected" can expire."""

import asyncio
import logging
import time
from uuid import UUID

from django.conf import settings

from audit import services as audit_services

from .database import database_async

logger = logging.getLogger(__name__)

socket_leases_renew = database_async(audit_services.socket_leases_renew)

RENEW_BATCH = 500
# Without a broker there is no beat: the process that holds sockets sweeps this often.
LOCAL_SWEEP_SECONDS = 60.0


@database_async
def sweep_queue_locally() -> bool:
    """Run beat's session sweep on the in-process task thread when there is no broker; return whether it was queued."""
    from audit.tasks import sessions_sweep, task_send

    if not sessions_sweep.app.conf.task_always_eager:
        return False  # beat sends it to a worker
    task_send(sessions_sweep)
    return True


class Presence:
    """The leases of the sockets this process holds open, renewed every third of their length.

    One UPDATE per RENEW_BATCH sockets per renewal, not a timer per socket. A
    socket leaves the set as soon as its consumer ends, whatever ended it, so
    its lease then runs out by itself even when its database cleanup failed;
    and when the process dies, all of its leases run out. On the embedded
    default (no broker, so no beat) the same loop runs the session sweep
    every LOCAL_SWEEP_SECONDS, in process.
    """

    def __init__(self) -> None:
        self.leases: set[UUID] = set()
        self._renewing: asyncio.Task | None = None

    def add(self, lease_id: UUID) -> None:
        """Count the socket as live from now on, and keep renewing in this event loop."""
        self.leases.add(lease_id)
        loop = asyncio.get_running_loop()
        if self._renewing is None or self._renewing.done() or self._renewing.get_loop() is not loop:
            self._renewing = loop.create_task(self._renew_forever(), name="socket-leases-renew")

    def discard(self, lease_id: UUID) -> None:
        """Stop renewing the socket's lease."""
        self.leases.discard(lease_id)

    async def _renew_forever(self) -> None:
        """Renew the live leases until none is left; sweep now and then when there is no beat."""
        swept_at = time.monotonic()
        while self.leases:
            await asyncio.sleep(settings.CHAT_SOCKET_LEASE_SECONDS / 3)
            await self.renew()
            if time.monotonic() - swept_at >= LOCAL_SWEEP_SECONDS:
                swept_at = time.monotonic()
                try:
                    await sweep_queue_locally()
                except Exception:
                    logger.warning("could not queue the session sweep", exc_info=True)

    async def renew(self) -> int:
        """Renew every live lease now; return how many rows were renewed."""
        lease_ids = list(self.leases)
        renewed = 0
        for start in range(0, len(lease_ids), RENEW_BATCH):
            batch = lease_ids[start : start + RENEW_BATCH]
            try:
                renewed += await socket_leases_renew(lease_ids=batch, seconds=settings.CHAT_SOCKET_LEASE_SECONDS)
            except Exception:
                # The next renewal tries again; a lease that ran out meanwhile comes back.
                logger.warning("could not renew %d socket leases", len(batch), exc_info=True)
        return renewed


presence = Presence()
