"""The WebSocket consumer: transport only. Authenticate, decode, check, hand over, send."""

import asyncio
import json
import logging
import time
from typing import Any
from uuid import UUID, uuid4

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import Error as DatabaseError

from . import limits, services
from .database import database_async
from .handshake import Caller, caller_identify, user_resolve
from .presence import presence
from .protocol import FrameError, frame_parse
from .retry import database_retry
from .turns import CLIENT_GONE, STOP, Turn

logger = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
# "Try again later". Not 1011: autobahn (daphne's WebSocket layer) lets an
# application close only with 1000 or 3000-4999, and raises on anything else.
CLOSE_SERVER_ERROR = 4500


class CallerRefused(Exception):
    """An anonymous caller, while CHAT_ALLOW_ANONYMOUS is off."""


def _socket_open(scope: dict[str, Any], *, session_id: UUID, lease_id: UUID, address: str) -> tuple[Caller, dict]:
    """Identify the caller, open or resume the session for them and lease the socket; return the `session` frame."""
    caller = caller_identify(scope, allow_anonymous=settings.CHAT_ALLOW_ANONYMOUS)
    if caller is None:
        raise CallerRefused
    frame = services.session_join(
        session_id=session_id, lease_id=lease_id, user_id=caller.user_id, anon_key=caller.anon_key, address=address
    )
    return caller, frame


socket_open = database_async(_socket_open)
user_resolve_async = database_async(user_resolve)
socket_leave = database_async(services.socket_leave)
turn_claim = database_async(services.turn_claim)

# A channel layer that does not answer within this is skipped when leaving.
LAYER_TIMEOUT_SECONDS = 5.0

# Staff watching a session renew their lease this often; a socket copies its
# frames to the watchers only while a lease is live, so an unwatched reply
# costs no channel-layer traffic per token.
WATCH_RENEW_SECONDS = 20.0
WATCH_LEASE_SECONDS = 60.0


def session_group(session_id: UUID) -> str:
    """The group of a session's chat sockets (they hear watch requests there)."""
    return f"session.{session_id}"


def watch_group(session_id: UUID) -> str:
    """The group of the staff watching a session."""
    return f"session-watch.{session_id}"


class SessionConsumer(AsyncWebsocketConsumer):
    """One chat session over one socket: `/ws/session/<uuid>/`."""

    session_id: UUID | None = None
    lease_id: UUID | None = None
    visitor: str = ""
    address: str = ""
    turn: Turn | None = None
    watched_until: float = 0.0
    _leaving: asyncio.Task | None = None

    async def __call__(self, scope, receive, send) -> None:
        """Serve the socket; however it ends (a close, an exception, a cancel), leave the session."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._leave()

    async def connect(self) -> None:
        """Accept, check the caller, open or resume the session, send the `session` frame.

        The handshake is accepted first, so it never waits on the database:
        daphne gives an application 5 s to answer a handshake, and under a
        burst of connections the database work queued behind that deadline.
        A refusal is then a close code, as DESIGN has it for 4401 and 4403.
        Everything else (the user, the visitor's session, the chat session
        and the socket's lease) is one call on the database thread.
        """
        await self.accept()
        session_id = UUID(self.scope["url_route"]["kwargs"]["session_id"])
        lease_id = uuid4()
        self.address = self._client_address()
        try:
            caller, frame = await socket_open(
                self.scope, session_id=session_id, lease_id=lease_id, address=self.address
            )
        except CallerRefused:
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        except services.SessionForbidden:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        except services.SocketLimitReached as exc:
            await self.error("too_many_connections", str(exc))
            await self.close(code=CLOSE_TOO_MANY)
            return
        except DatabaseError as exc:
            logger.warning("could not open session %s: %s", session_id, exc)
            await self._refuse_unavailable()
            return
        except Exception:
            logger.exception("could not open session %s", session_id)
            await self._refuse_unavailable()
            return
        self.session_id, self.lease_id = session_id, lease_id
        self.visitor = services.visitor_key(user_id=caller.user_id, anon_key=caller.anon_key)
        presence.add(lease_id)
        await self.emit(frame)
        try:
            # Only staff watching need this group; the chat goes on without it.
            await asyncio.wait_for(
                self.channel_layer.group_add(session_group(session_id), self.channel_name),
                timeout=LAYER_TIMEOUT_SECONDS,
            )
        except Exception:
            logger.warning("could not join the group of session %s", session_id, exc_info=True)
        # Staff already watching learn of this socket at their next renewal.

    async def _refuse_unavailable(self) -> None:
        """Tell the client the chat cannot open now (the database is down, most likely), and close."""
        await self.error("internal", "The chat is unavailable right now; try again shortly.")
        await self.close(code=CLOSE_SERVER_ERROR)

    def _client_address(self) -> str:
        """Return the client's IP address (daphne's --proxy-headers make it the forwarded one)."""
        client = self.scope.get("client")
        return str(client[0])[:64] if client else ""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Handle one client frame; bad input gets an error frame and the socket stays open."""
        if self.session_id is None:
            return  # refused at connect; the close is on its way
        try:
            await self._frame_handle(text_data, bytes_data)
        except Exception:
            # Whatever went wrong with this frame, the socket and its session live on.
            logger.exception("could not handle a frame on session %s", self.session_id)
            await self.error("internal", "The frame could not be handled; try again.")

    async def _frame_handle(self, text_data: str | None, bytes_data: bytes | None) -> None:
        """Decode one frame and do what it asks."""
        try:
            frame = frame_parse(text=text_data, binary=bytes_data, max_chars=settings.CHAT_MAX_MESSAGE_CHARS)
        except FrameError as exc:
            await self.error(exc.code, exc.message)
            return
        if frame.kind == "ping":
            await self.emit({"type": "pong"})
        elif frame.kind == "stop":
            if self.turn is not None:
                self.turn.cancel(STOP)
        else:
            await self._message(frame.content)

    async def _message(self, content: str) -> None:
        """Start a turn, unless one is running or a limit says no."""
        if self.turn is not None and self.turn.running():
            await self.error("busy", "A reply is still being generated; wait for it or send stop.")
            return
        refusal = await limits.message_allow(visitor=self.visitor, address=self.address)
        refusal = refusal or await limits.token_budget_check(visitor=self.visitor)
        if refusal is not None:
            await self.emit(
                {"type": "error", "code": refusal.code, "message": refusal.message, "retry_after": refusal.retry_after}
            )
            return
        try:
            claimed = await turn_claim(session_id=self.session_id, lease_id=self.lease_id)
        except Exception:
            logger.exception("could not claim a turn on session %s", self.session_id)
            await self.error("internal", "The message could not be accepted; try again.")
            return
        if not claimed:
            await self.error("busy", "A reply is being generated for this session in another window.")
            return
        await self.watchers_send({"type": "user_message", "content": content})
        self.turn = Turn(
            session_id=self.session_id, lease_id=self.lease_id, visitor=self.visitor, content=content, emit=self.emit
        )

    async def disconnect(self, code: int) -> None:
        """Stop the reply (keeping what was produced), then leave the session."""
        await self._leave()

    async def _leave(self) -> None:
        """Leave the session once, shielded: a second cancel of the consumer does not cut the cleanup short."""
        if self._leaving is None:
            self._leaving = asyncio.ensure_future(self._session_leave())
        await asyncio.shield(self._leaving)

    async def _session_leave(self) -> None:
        """End the turn, stop renewing the lease, drop it (ending the session if last), leave the group.

        Each step stands alone: a database or channel layer that is down does
        not keep the others from running, and a lease that could not be
        dropped runs out by itself, after which the sweep ends the session.
        """
        if self.session_id is None:
            return
        if self.turn is not None:
            self.turn.cancel(CLIENT_GONE)
            await self.turn.wait()
        # Renewed until the turn has ended: a reply still retrying its write
        # keeps its claim from being taken over.
        presence.discard(self.lease_id)
        try:
            await database_retry(
                socket_leave, what="leave the session", session_id=self.session_id, lease_id=self.lease_id
            )
        except Exception:
            logger.exception("could not leave session %s; its lease will run out", self.session_id)
        try:
            await asyncio.wait_for(
                self.channel_layer.group_discard(session_group(self.session_id), self.channel_name),
                timeout=LAYER_TIMEOUT_SECONDS,
            )
        except Exception:
            logger.warning("could not leave the group of session %s", self.session_id, exc_info=True)

    async def emit(self, frame: dict[str, Any]) -> None:
        """Send a frame (and copy it to staff watching); a client already gone is not an error."""
        try:
            await self.send(text_data=json.dumps(frame, default=str))
        except Exception:
            logger.debug("could not send a %s frame to session %s", frame.get("type"), self.session_id)
        await self.watchers_send(frame)

    async def watchers_send(self, frame: dict[str, Any]) -> None:
        """Copy a frame to the staff watching this session, if any watch now."""
        if self.watched_until < time.monotonic() or frame.get("type") in ("session", "pong"):
            return
        try:
            await self.channel_layer.group_send(watch_group(self.session_id), {"type": "watch.frame", "frame": frame})
        except Exception:
            # Watching is a convenience: it never breaks the chat.
            logger.warning("could not copy a frame to the watchers of session %s", self.session_id, exc_info=True)

    async def watch_start(self, event: dict[str, Any]) -> None:
        """A staff member watches (or still watches) this session: copy frames for a while."""
        self.watched_until = time.monotonic() + WATCH_LEASE_SECONDS

    async def error(self, code: str, message: str) -> None:
        """Send an error frame."""
        await self.emit({"type": "error", "code": code, "message": message})


class SessionWatchConsumer(AsyncWebsocketConsumer):
    """Staff watch a session's replies live: `/ws/admin/sessions/<uuid>/watch/`, read-only."""

    session_id: UUID | None = None
    renewing: asyncio.Task | None = None

    async def connect(self) -> None:
        """Let staff in, join the session's watch group, and ask its sockets to copy their frames."""
        await self.accept()
        try:
            user = await user_resolve_async(self.scope)
        except DatabaseError as exc:
            logger.warning("could not check who watches a session: %s", exc)
            await self.close(code=CLOSE_SERVER_ERROR)
            return
        if not (user.is_authenticated and user.is_staff):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.session_id = UUID(self.scope["url_route"]["kwargs"]["session_id"])
        await self.channel_layer.group_add(watch_group(self.session_id), self.channel_name)
        self.renewing = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        """Renew the watch lease with the session's sockets, now and every WATCH_RENEW_SECONDS."""
        while True:
            await self.channel_layer.group_send(session_group(self.session_id), {"type": "watch.start"})
            await asyncio.sleep(WATCH_RENEW_SECONDS)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Watching is read-only: anything sent is ignored."""

    async def watch_frame(self, event: dict[str, Any]) -> None:
        """Pass a frame of the watched session on to the staff member's browser."""
        await self.send(text_data=json.dumps(event["frame"], default=str))

    async def disconnect(self, code: int) -> None:
        """Stop renewing and leave the watch group (the lease then runs out by itself)."""
        if self.renewing is not None:
            self.renewing.cancel()
        if self.session_id is not None:
            await self.channel_layer.group_discard(watch_group(self.session_id), self.channel_name)
