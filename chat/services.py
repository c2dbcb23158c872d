"""What the consumer asks of the chat: join and leave a session, claim a turn."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit import selectors, services
from audit.models import ChatSession, SocketLease
from audit.services import FeedbackLimitReached, ReplyNotFound, SessionForbidden, feedback_record

from .llm import chat_model_get

__all__ = [
    "FeedbackLimitReached",
    "ReplyNotFound",
    "SessionForbidden",
    "SocketLimitReached",
    "feedback_record",
    "session_join",
    "socket_leave",
    "turn_claim",
    "turn_owner",
]

# A backstop: a claim this old is taken over even when its socket's lease is
# live (the turn hung). Normally a claim frees once its holder's lease runs out.
TURN_STALE_AFTER = timedelta(minutes=10)


class SocketLimitReached(Exception):
    """The visitor, or the client address, holds as many sockets as allowed."""


def visitor_key(*, user_id: int | None, anon_key: str) -> str:
    """Return who holds a socket, as the socket limits and rate limits count them."""
    return f"user:{user_id}" if user_id is not None else f"anon:{anon_key}"


def _sockets_check(*, visitor: str, address: str) -> None:
    """Raise SocketLimitReached when the visitor or the address may open no further socket.

    Counted from the live leases, so sockets in every process count, and a
    socket that vanished stops counting when its lease runs out. Two
    handshakes at the same instant may both pass: the limit is a fence
    against floods, not an exact quota.
    """
    per_visitor, per_address = settings.CHAT_MAX_SOCKETS_PER_VISITOR, settings.CHAT_MAX_SOCKETS_PER_ADDRESS
    if per_visitor <= 0 and per_address <= 0:
        return
    by_visitor, by_address = services.sockets_live_count(visitor=visitor, address=address if per_address > 0 else "")
    if 0 < per_visitor <= by_visitor:
        raise SocketLimitReached(f"At most {per_visitor} chat sockets may be open at once; close one first.")
    if 0 < per_address <= by_address:
        raise SocketLimitReached(f"Too many chat sockets are open from this address (at most {per_address}).")


@dataclass(frozen=True)
class Joined:
    """A socket joined its session: the `session` frame, and where its running turn is, if one runs."""

    frame: dict[str, Any]
    turn_owner: str = ""


def session_join(*, session_id: UUID, lease_id: UUID, user_id: int | None, anon_key: str, address: str) -> Joined:
    """Open or resume the session for its owner, lease the socket on it; return the `session` frame.

    Raise SessionForbidden when someone else owns it, SocketLimitReached when
    the caller holds too many sockets already. The frame says whether a turn
    is running (its frames follow, replayed) and the last frame_seq of the
    finished turns.
    """
    model = chat_model_get()
    visitor = visitor_key(user_id=user_id, anon_key=anon_key)
    with transaction.atomic():
        _sockets_check(visitor=visitor, address=address)
        opened = services.session_open(
            session_id=session_id, user_id=user_id, anon_key=anon_key, model=model.model, llm_mode=model.mode
        )
        services.socket_lease_open(
            session_id=session_id,
            lease_id=lease_id,
            visitor=visitor,
            address=address,
            seconds=settings.CHAT_SOCKET_LEASE_SECONDS,
        )
    session = opened.session
    # A claim whose socket's lease ran out is a turn nobody runs any more (its process died):
    # not running, whatever the row says, until the next claim or the sweep closes it.
    running = (
        session.turn_lease is not None
        and SocketLease.objects.filter(pk=session.turn_lease, expires_at__gt=timezone.now()).exists()
    )
    history = []
    if opened.resumed:
        before = session.turn_started_at if running else None
        history = selectors.session_history(session_id=session_id, before=before)
    frame = {
        "type": "session",
        "session_id": str(session_id),
        "resumed": opened.resumed,
        "history": history,
        "model": model.model,
        "llm_mode": model.mode,
        "turn_running": running,
        "frame_seq": session.frame_seq,
    }
    return Joined(frame=frame, turn_owner=session.turn_owner if running else "")


def socket_leave(*, session_id: UUID, lease_id: UUID) -> bool:
    """Drop the socket's lease; the last live one out ends the session and queues its summary."""
    return services.socket_leave(session_id=session_id, lease_id=lease_id)


def turn_claim(*, session_id: UUID, lease_id: UUID, owner: str) -> services.Claim | None:
    """Claim the session's single turn slot for this socket; return the claim (see there), None when busy."""
    return services.turn_claim(session_id=session_id, lease_id=lease_id, stale_after=TURN_STALE_AFTER, owner=owner)


def turn_owner(*, session_id: UUID) -> str:
    """Return the channel of the process running the session's turn ("" when none runs)."""
    return (
        ChatSession.objects.filter(pk=session_id, turn_lease__isnull=False).values_list("turn_owner", flat=True).first()
        or ""
    )
