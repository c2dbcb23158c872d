"""The WebSocket consumer: transport only. Authenticate, decode, check, hand over, send."""

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs
from uuid import UUID, uuid4

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import Error as DatabaseError

from audit import metrics, selectors
from audit.models import ChatSession

from . import limits, services
from .database import database_async
from .handshake import Caller, caller_identify, user_resolve
from .presence import presence
from .protocol import ClientFrame, FrameError, frame_parse
from .retry import database_retry
from .streams import LAYER_TIMEOUT_SECONDS, Frame, hub, session_group, watch_group
from .turns import Turn

__all__ = ["SessionConsumer", "SessionWatchConsumer", "session_group", "watch_group"]

logger = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY = 4429
# "Try again later". Not 1011: autobahn (daphne's WebSocket layer) lets an
# application close only with 1000 or 3000-4999, and raises on anything else.
CLOSE_SERVER_ERROR = 4500


class CallerRefused(Exception):
    """An anonymous caller, while CHAT_ALLOW_ANONYMOUS is off."""


def _socket_open(
    scope: dict[str, Any], *, session_id: UUID, lease_id: UUID, address: str
) -> tuple[Caller, services.Joined]:
    """Identify the caller, open or resume the session for them and lease the socket; return the `session` frame."""
    caller = caller_identify(scope, allow_anonymous=settings.CHAT_ALLOW_ANONYMOUS)
    if caller is None:
        raise CallerRefused
    joined = services.session_join(
        session_id=session_id, lease_id=lease_id, user_id=caller.user_id, anon_key=caller.anon_key, address=address
    )
    return caller, joined


socket_open = database_async(_socket_open)
user_resolve_async = database_async(user_resolve)
socket_leave = database_async(services.socket_leave)
turn_claim = database_async(services.turn_claim)
turn_owner = database_async(services.turn_owner)
last_user_message = database_async(selectors.last_user_message)
feedback_record = database_async(services.feedback_record)

# A process asked to send a running turn's frames answers within this, or the reply is given up on.
FOLLOW_TIMEOUT_SECONDS = 5.0
# At most one such request this often when frames arrive with a gap.
REFOLLOW_MIN_SECONDS = 2.0

# Staff watching a session renew their lease this often; a turn copies its
# frames to the watchers only while a lease is live, so an unwatched reply
# costs no channel-layer traffic per token.
WATCH_RENEW_SECONDS = 20.0


def after_parse(query_string: bytes) -> int | None:
    """Return the `after` position of the URL query (0 when absent), None when it is not a non-negative integer."""
    values = parse_qs(query_string.decode("latin-1")).get("after")
    if not values:
        return 0
    try:
        after = int(values[-1])
    except ValueError:
        return None
    return after if after >= 0 else None


class ConnectionKeepingConsumer(AsyncWebsocketConsumer):
    """A WebSocket consumer that leaves the database thread's connection alone between messages.

    Channels (4.2+) runs Django's `close_old_connections` on the shared
    database thread before every message a consumer handles: each frame
    from the browser and each channel-layer message (a frame of a turn
    followed from another process). With `CONN_MAX_AGE` 0 that handed the
    thread's connection back to the pool every time, to be borrowed again
    by the next call, and every message waited its turn on that thread.
    The thread's connection is checked before each call instead (see
    `chat.database`).
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Run the message's handler (Channels' dispatch, less `aclose_old_connections`)."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


class SessionConsumer(ConnectionKeepingConsumer):
    """One socket of a chat session: `/ws/session/<uuid>/[?after=<frame_seq>]`.

    The turns it starts run for the session, not for the socket (see
    `chat.streams`): every socket of the session, here or in another
    process, is sent their frames, and a socket that connects while one runs
    is sent the frames after `after` first.
    """

    session_id: UUID | None = None
    lease_id: UUID | None = None
    visitor: str = ""
    address: str = ""
    # The last frame_seq sent on this socket: a frame is sent once, in order.
    frame_seq_sent: int = 0
    grouped: bool = False
    # The channel of the process whose running turn this socket follows from afar.
    # The process whose turn's frames are being sent on this socket ("" when none is), the
    # processes asked for their turn's frames, and frames waiting for the turn being sent to end.
    following: str = ""
    _asked: set[str]
    _held: list[tuple[str, Frame]]
    _draining: bool = False
    _follow_watchdog: asyncio.TimerHandle | None = None
    _follow_checking: asyncio.Task | None = None
    _heard_at: float = 0.0  # when the process running the followed turn was last heard from
    _refollowed_at: float = 0.0
    _leaving: asyncio.Task | None = None
    # Whether this socket is in the open-sockets metric.
    _counted: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asked = set()
        self._held = []

    async def __call__(self, scope, receive, send) -> None:
        """Serve the socket; however it ends (a close, an exception, a cancel), leave the session."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._leave()

    async def connect(self) -> None:
        """Accept, check the caller, open or resume the session, send the `session` frame, follow a running turn.

        The handshake is accepted first, so it never waits on the database:
        daphne gives an application 5 s to answer a handshake, and under a
        burst of connections the database work queued behind that deadline.
        A refusal is then a close code, as DESIGN has it for 4401 and 4403.
        Everything else (the user, the visitor's session, the chat session
        and the socket's lease) is one call on the database thread.
        """
        await self.accept()
        metrics.socket_opened()
        self._counted = True
        session_id = UUID(self.scope["url_route"]["kwargs"]["session_id"])
        after = after_parse(self.scope.get("query_string", b""))
        lease_id = uuid4()
        self.address = self._client_address()
        # Joined before the session is read: a turn starting meanwhile in another process is heard of.
        await self._group_join(session_id)
        try:
            caller, joined = await socket_open(
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
        await self.emit(joined.frame)
        if after is None:
            await self.error("invalid_message", "'after' must be a non-negative integer; it was ignored.")
        # What this socket has: the session's finished turns are in the history; of a running
        # turn, what the client says it saw (its frames are numbered after the session's frame_seq).
        recorded = joined.frame["frame_seq"]
        self.frame_seq_sent = max(after or 0, recorded) if joined.frame["turn_running"] else recorded
        hub().socket_add(session_id, self)
        stream = hub().streams.get(session_id)
        if stream is not None and not stream.ended:
            # A turn runs here (or has just ended: then nothing is after what the history holds).
            await stream.local_follow(self)
        elif joined.frame["turn_running"]:
            await self._follow_remote(joined.turn_owner, base=recorded)

    async def _group_join(self, session_id: UUID) -> None:
        """Join the session's group: turns starting in other processes, staff watching. The chat goes on without it."""
        try:
            async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                await self.channel_layer.group_add(session_group(session_id), self.channel_name)
            self.grouped = True
        except Exception:
            logger.warning("could not join the group of session %s", session_id, exc_info=True)

    async def _refuse_unavailable(self) -> None:
        """Tell the client the chat cannot open now (the database is down, most likely), and close."""
        await self.error("internal", "The chat is unavailable right now; try again shortly.")
        await self.close(code=CLOSE_SERVER_ERROR)

    def _client_address(self) -> str:
        """Return the client's IP address (daphne's --proxy-headers make it the forwarded one)."""
        client = self.scope.get("client")
        return str(client[0])[:64] if client else ""

    # --- Frames of the session's turns --------------------------------------------------------------

    async def frame_deliver(self, frame: Frame, source: str = "") -> None:
        """Send a turn's frame unless this socket has had it: each frame once, in order, turn after turn.

        Called directly for a turn running in this process (`chat.streams.Follower`).
        `source`: the channel of the process the frame came from ("" for this
        one). Frames come from several sources: a turn followed from another
        process may still be on its way when the next one starts here (or in
        a third process). Until the turn being sent has ended, frames of
        other sources wait their turn, so no frame of the next turn overtakes
        the `done` of this one.
        """
        self._held.append((source, frame))
        if self._draining:
            return  # the loop below, already running, sends it
        self._draining = True
        try:
            while self._held:
                index = 0
                if self.following:
                    index = next((i for i, (src, _) in enumerate(self._held) if src == self.following), -1)
                    if index < 0:
                        break  # the rest waits for the followed turn's next frames
                source, (seq, kind, text) = self._held.pop(index)
                if source and not self.following:
                    self.following = source
                if seq > self.frame_seq_sent:
                    self.frame_seq_sent = seq
                    try:  # _send_text inlined: this runs for every token
                        await self.send(text_data=text)
                    except Exception:
                        logger.debug("could not send a %s frame to session %s", kind, self.session_id)
                if source and kind == "done":
                    self._asked.discard(source)
                    self.following = ""
        finally:
            self._draining = False

    async def _follow_remote(self, owner: str, *, base: int) -> None:
        """Ask the process running the session's turn to send this socket its frames after what it has."""
        if not owner or owner == hub().channel:
            # Nobody can be asked (the layer was down when it started), or it ran here and is
            # over, with its release not recorded yet: the history has what was saved.
            await self._reply_unavailable()
            return
        self._asked.add(owner)
        await self._follow_request(owner, after=max(self.frame_seq_sent, base))
        if self._follow_checking is None or self._follow_checking.done():
            self._follow_checking = asyncio.create_task(self._follow_check())

    async def _follow_request(self, owner: str, *, after: int) -> None:
        """Ask a process for its turn's frames after `after`; give up if it does not answer."""
        request = {"type": "turn.follow", "session_id": str(self.session_id), "channel": self.channel_name}
        self._heard_at = self._refollowed_at = time.monotonic()
        try:
            await hub().request_send(owner, {**request, "after": after})
        except Exception:
            logger.warning("could not ask for the frames of session %s", self.session_id, exc_info=True)
            await self._reply_unavailable()
            return
        self._watchdog_cancel()
        self._follow_watchdog = asyncio.get_running_loop().call_later(
            FOLLOW_TIMEOUT_SECONDS, lambda: asyncio.ensure_future(self._reply_unavailable())
        )

    async def _follow_check(self) -> None:
        """While following a reply from afar, ask again after a silence (lost frames, a process gone)."""
        while self._asked:
            await asyncio.sleep(settings.CHAT_FOLLOW_SILENCE_SECONDS / 2)
            silent = time.monotonic() - self._heard_at > settings.CHAT_FOLLOW_SILENCE_SECONDS
            if self._asked and silent and self._follow_watchdog is None:
                owner = self.following or next(iter(self._asked))
                await self._follow_request(owner, after=self.frame_seq_sent)

    def _watchdog_cancel(self) -> None:
        if self._follow_watchdog is not None:
            self._follow_watchdog.cancel()
            self._follow_watchdog = None

    async def _reply_unavailable(self) -> None:
        """The running reply cannot be followed (its process is gone): say so; the record has what was saved."""
        self._watchdog_cancel()
        for owner in self._asked:
            await self._unfollow_send(owner)
        self._asked.clear()
        self.following = ""
        # What came from elsewhere is dropped with them; a turn of this process goes on.
        self._held = [(source, frame) for source, frame in self._held if not source]
        await self.error(
            "reply_unavailable",
            "The reply being generated cannot be followed from here; reload the session to see what was recorded.",
        )
        if self._held:
            source, frame = self._held.pop(0)
            await self.frame_deliver(frame, source)

    async def turn_started(self, event: dict[str, Any]) -> None:
        """A turn of the session started: follow it when it runs in another process."""
        if self.session_id is not None and event["owner"] != hub().channel:
            await self._follow_remote(event["owner"], base=int(event["base"]))

    async def turn_following(self, event: dict[str, Any]) -> None:
        """The process running the turn sends its frames from now on."""
        self._watchdog_cancel()
        self._heard_at = time.monotonic()

    async def turn_frame(self, event: dict[str, Any]) -> None:
        """A frame of a turn running in another process (dropped unless this socket asked for it)."""
        owner = event.get("owner", "")
        if self.session_id is None or owner not in self._asked:
            return
        seq, kind, text = event["frame"]
        frame = (seq, kind, text)
        self._heard_at = time.monotonic()
        missing = seq > self.frame_seq_sent + 1 and kind != "user_message"
        if missing and owner == self.following:
            # Frames went missing on the way (a full channel, a layer blip): ask for them again; this one follows.
            if self._heard_at - self._refollowed_at > REFOLLOW_MIN_SECONDS:
                await self._follow_request(owner, after=self.frame_seq_sent)
            return
        await self.frame_deliver(frame, owner)

    async def turn_gone(self, event: dict[str, Any]) -> None:
        """The process asked for a turn's frames has none any more."""
        if self.session_id is not None and event.get("owner", "") in self._asked:
            await self._reply_unavailable()

    async def watch_start(self, event: dict[str, Any]) -> None:
        """A staff member watches (or still watches) this session: turns run here copy their frames for a while."""
        if self.session_id is not None:
            hub().watch_renew(self.session_id)

    # --- Client frames -----------------------------------------------------------------------------

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
        """Decode one frame and do what it asks (nothing on a socket refused at connect, being closed)."""
        if self.session_id is None:
            return
        try:
            frame = frame_parse(text=text_data, binary=bytes_data, max_chars=settings.CHAT_MAX_MESSAGE_CHARS)
        except FrameError as exc:
            await self.error(exc.code, exc.message)
            return
        if frame.kind == "ping":
            await self.emit({"type": "pong"})
        elif frame.kind == "stop":
            await self._stop()
        elif frame.kind == "message":
            await self._message(frame.content)
        elif frame.kind == "feedback":
            await self._feedback(frame)
        else:
            await self._resend(frame.kind, frame.content)

    async def _feedback(self, frame: ClientFrame) -> None:
        """Record the visitor's rating of a reply of this session (and their comment); say it was saved.

        A refusal's error frame says what it is about (`"about": "feedback"` and
        the `turn_id`), so a client does not take it for its running turn's.
        """
        about = {"about": "feedback", "turn_id": frame.turn_id}
        try:
            await feedback_record(
                session_id=self._joined()[0], turn_id=frame.turn_id, rating=frame.rating, comment=frame.content
            )
        except services.ReplyNotFound:
            await self.error("invalid_message", "No reply of this session has that turn_id.", **about)
            return
        except services.FeedbackLimitReached:
            await self.error("rate_limited", "This reply was rated too many times.", **about)
            return
        await self.emit({"type": "feedback_saved", "turn_id": frame.turn_id, "rating": frame.rating})

    def _joined(self) -> tuple[UUID, UUID]:
        """Return the session and the lease of this socket, which frames are handled only after."""
        if self.session_id is None or self.lease_id is None:
            raise RuntimeError("the socket has not joined its session")
        return self.session_id, self.lease_id

    async def _stop(self) -> None:
        """Stop the session's running reply, wherever it runs; nothing to stop is not an error."""
        session_id, _ = self._joined()
        if hub().turn_stop_local(session_id):
            return
        owner = self.following or next(iter(self._asked), "") or await turn_owner(session_id=session_id)
        if owner and owner != hub().channel:
            await hub().request_send(owner, {"type": "turn.stop", "session_id": str(session_id)})

    async def _resend(self, kind: str, content: str) -> None:
        """Regenerate the last reply, or replace the last message with `content` (edit), as a new turn."""
        session_id, _ = self._joined()
        if hub().turn_running(session_id):
            await self.error("busy", "A reply is still being generated; wait for it or send stop.")
            return
        last = await last_user_message(session_id=session_id)
        if last is None:
            await self.error("invalid_message", f"There is no message to {kind} yet; send one first.")
            return
        await self._message(last if kind == "regenerate" else content, resend=kind)

    async def _message(self, content: str, resend: str = "") -> None:
        """Start a turn, unless one is running or a limit says no. `resend`: see `Turn`."""
        session_id, lease_id = self._joined()
        if hub().turn_running(session_id):
            await self.error("busy", "A reply is still being generated; wait for it or send stop.")
            return
        refusal = await limits.message_allow(visitor=self.visitor, address=self.address)
        refusal = refusal or await limits.token_budget_check(visitor=self.visitor)
        if refusal is not None:
            metrics.error_sent(refusal.code)
            await self.emit(
                {"type": "error", "code": refusal.code, "message": refusal.message, "retry_after": refusal.retry_after}
            )
            return
        try:
            owner = await hub().channel_name()
        except Exception:
            # Without the layer the turn still runs; only sockets of other processes cannot follow it.
            logger.warning("could not open this process's turn channel", exc_info=True)
            owner = ""
        try:
            claim = await turn_claim(session_id=session_id, lease_id=lease_id, owner=owner)
        except ChatSession.DoesNotExist:
            # It was deleted as empty while this socket could not renew its lease: connecting again recreates it.
            await self._refuse_unavailable()
            return
        except services.SessionForbidden:
            # Its owner deleted it (from another tab, say).
            await self.error("forbidden", "This session was deleted.")
            await self.close(code=CLOSE_FORBIDDEN)
            return
        except Exception:
            logger.exception("could not claim a turn on session %s", session_id)
            await self.error("internal", "The message could not be accepted; try again.")
            return
        if claim is None:
            await self.error("busy", "A reply is being generated for this session in another window.")
            return
        base = claim.base
        # No await from here to turn_start: a stream is never left without its turn.
        stream = hub().stream_open(session_id, base)
        turn = Turn(
            session_id=session_id,
            lease_id=lease_id,
            visitor=self.visitor,
            content=content,
            emit=stream.publish,
            frame_seq_next=lambda: stream.last_seq + 1,
            resend=resend,
        )
        hub().turn_start(stream, turn)
        # This socket sent the message: its user_message frame goes to the session's other sockets only.
        self.frame_seq_sent = max(self.frame_seq_sent, base + 1)
        # Numbered first: the turn's task has not run yet (it starts at this coroutine's next await).
        await stream.publish({"type": "user_message", "content": content, **({"resend": resend} if resend else {})})
        if claim.shared:
            # Other sockets are on the session, maybe in other processes: tell them. (A socket that
            # joins later finds the turn on the session row.) One socket alone costs no message.
            hub().turn_announce_soon(session_id, base)

    # --- Leaving -----------------------------------------------------------------------------------

    async def disconnect(self, code: int) -> None:
        """Leave the session; a reply this socket started goes on (see `chat.streams`)."""
        await self._leave()

    async def _leave(self) -> None:
        """Leave the session once, shielded: a second cancel of the consumer does not cut the cleanup short."""
        if self._leaving is None:
            self._leaving = asyncio.ensure_future(self._session_leave())
        await asyncio.shield(self._leaving)

    async def _session_leave(self) -> None:
        """Stop following, leave the group, then drop the lease (ending the session if last).

        Each step stands alone: a database or channel layer that is down does
        not keep the others from running, and a lease that could not be
        dropped runs out by itself, after which the sweep ends the session.
        A socket whose turn still runs keeps its lease (and the session) until
        that turn has ended: the turn's claim is held under it.
        """
        self._watchdog_cancel()
        if self._counted:
            self._counted = False
            metrics.socket_closed()
        if self.grouped:
            sid = self.session_id or UUID(self.scope["url_route"]["kwargs"]["session_id"])
            try:
                async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                    await self.channel_layer.group_discard(session_group(sid), self.channel_name)
            except Exception:
                logger.warning("could not leave the group of session %s", sid, exc_info=True)
        if self.session_id is None:
            return
        hub().socket_discard(self.session_id, self)
        if self._follow_checking is not None:
            self._follow_checking.cancel()
        for owner in self._asked:
            await self._unfollow_send(owner)
        stream = hub().streams.get(self.session_id)
        if (
            stream is not None
            and not stream.ended
            and stream.turn is not None
            and stream.turn.lease_id == self.lease_id
        ):
            stream.after_end.append(self._lease_drop)
            return
        await self._lease_drop()

    async def _unfollow_send(self, owner: str) -> None:
        """Tell the process running the followed turn to stop sending this socket its frames."""
        unfollow = {"type": "turn.unfollow", "session_id": str(self.session_id), "channel": self.channel_name}
        try:
            await hub().request_send(owner, unfollow)
        except Exception:
            logger.debug("could not stop following the turn of session %s", self.session_id)

    async def _lease_drop(self) -> None:
        """Stop renewing the socket's lease and drop it, ending the session when it was the last."""
        session_id, lease_id = self._joined()
        presence.discard(lease_id)
        try:
            await database_retry(socket_leave, what="leave the session", session_id=session_id, lease_id=lease_id)
        except Exception:
            logger.exception("could not leave session %s; its lease will run out", session_id)

    async def emit(self, frame: dict[str, Any]) -> None:
        """Send a frame; a client already gone is not an error."""
        await self._send_text(json.dumps(frame, default=str), frame.get("type", ""))

    async def _send_text(self, text: str, kind: str) -> None:
        try:
            await self.send(text_data=text)
        except Exception:
            logger.debug("could not send a %s frame to session %s", kind, self.session_id)

    async def error(self, code: str, message: str, **extra: str) -> None:
        """Send an error frame (with `extra` fields, if any)."""
        metrics.error_sent(code)
        await self.emit({"type": "error", "code": code, "message": message, **extra})


class SessionWatchConsumer(ConnectionKeepingConsumer):
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
        self.session_id = session_id = UUID(self.scope["url_route"]["kwargs"]["session_id"])
        try:
            async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                await self.channel_layer.group_add(watch_group(session_id), self.channel_name)
        except Exception as exc:
            # Without the layer there is nothing to watch through.
            logger.warning("could not watch session %s: %s", session_id, repr(exc))
            await self.close(code=CLOSE_SERVER_ERROR)
            return
        self.renewing = asyncio.create_task(self._renew(session_id))

    async def _renew(self, session_id: UUID) -> None:
        """Renew the watch lease with the session's sockets, now and every WATCH_RENEW_SECONDS."""
        while True:
            try:
                async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                    await self.channel_layer.group_send(
                        session_group(session_id), {"type": "watch.start", "session_id": str(session_id)}
                    )
            except Exception as exc:
                # The next renewal may get through; meanwhile the frames stop once the lease runs out.
                logger.warning("could not renew the watch of session %s: %s", session_id, repr(exc))
            await asyncio.sleep(WATCH_RENEW_SECONDS)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Watching is read-only: anything sent is ignored."""

    async def watch_frame(self, event: dict[str, Any]) -> None:
        """Pass a frame of the watched session on to the staff member's browser (as JSON text already)."""
        await self.send(text_data=event["text"])

    async def disconnect(self, code: int) -> None:
        """Stop renewing and leave the watch group (the lease then runs out by itself)."""
        if self.renewing is not None:
            self.renewing.cancel()
        if self.session_id is not None:
            try:
                async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                    await self.channel_layer.group_discard(watch_group(self.session_id), self.channel_name)
            except Exception as exc:
                # The group's entry expires by itself (channels-redis's group_expiry).
                logger.warning("could not leave the watchers of session %s: %s", self.session_id, repr(exc))
