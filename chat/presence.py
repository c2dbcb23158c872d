"""This process's live sockets, whose leases it renews together so "connected" can expire."""

import asyncio
import logging
from uuid import UUID

from channels.db import database_sync_to_async
from django.conf import settings

from audit import services as audit_services

logger = logging.getLogger(__name__)

socket_leases_renew = database_sync_to_async(audit_services.socket_leases_renew)

RENEW_BATCH = 500


class Presence:
    """The leases of the sockets this process holds open, renewed every third of their length.

    One UPDATE per RENEW_BATCH sockets per renewal, not a timer per socket. A
    socket leaves the set as soon as its consumer ends, whatever ended it, so
    its lease then runs out by itself even when its database cleanup failed;
    and when the process dies, all of its leases run out.
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
        """Renew the live leases until none is left."""
        while self.leases:
            await asyncio.sleep(settings.CHAT_SOCKET_LEASE_SECONDS / 3)
            await self.renew()

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
