"""A turn's frames for every socket of its session, in this process or another: numbered, replayed, stoppable.

A turn runs in the process whose socket started it, detached from that
socket: a reload or a dropped network does not stop it. Its frames are
numbered per session (`frame_seq`, after the last number of the session's
finished turns) and kept in that process's memory for the turn's length
plus CHAT_RESUME_GRACE_SECONDS, so a socket can be sent what it missed:

- Sockets of the session in the same process get each frame by a direct call.
- A socket in another process asks the turn's process to be followed
  (`turn.follow`, with the last frame_seq it has); that process sends it the
  missing frames, then every new one, on the socket's own channel, in order.
  It learns where the turn runs from the `session` row when it connects
  (`turn_owner`, the owning process's channel) or from the `turn.started`
  message sent to the session's group when a turn starts.
- `stop` from any socket reaches the turn's process on its channel.

A reply with no socket following it for CHAT_UNATTENDED_REPLY_SECONDS is
stopped (`client_gone`). Each event loop has its own hub: one per daphne
process, one per test.
"""

import asyncio
import json
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from uuid import UUID

from channels.layers import get_channel_layer
from django.conf import settings

from .turns import CLIENT_GONE, STOP, Turn

logger = logging.getLogger(__name__)

# A channel layer that does not answer within this is given up on for the frame.
LAYER_TIMEOUT_SECONDS = 5.0
# Staff watching a session have their frames copied for this long after each renewal.
WATCH_LEASE_SECONDS = 60.0
# A frame for the watchers that the layer does not take within this is skipped (the chat goes on).
WATCH_SEND_TIMEOUT_SECONDS = 1.0
WATCHED_PRUNE_AT = 1000
# How long `hub_close` waits for the hub's tasks to end on their cancel (then as long again, cancelling).
HUB_CLOSE_SECONDS = 5.0


def session_group(session_id: UUID) -> str:
    """The group of a session's chat sockets: they hear that a turn started, and staff watch requests."""
    return f"session.{session_id}"


def watch_group(session_id: UUID) -> str:
    """The group of the staff watching a session."""
    return f"session-watch.{session_id}"


# A numbered frame as it is kept and passed on: (frame_seq, its type, its JSON text). Serialized
# once for every socket that gets it, and, being a tuple of str and int, left alone by the
# garbage collector however many are kept.
Frame = tuple[int, str, str]


class Follower(Protocol):
    """A socket of this process that is sent a turn's frames."""

    frame_seq_sent: int

    async def frame_deliver(self, frame: Frame, source: str = "") -> None: ...


class Stream:
    """One turn's frames, numbered from `base` + 1, and who follows them."""

    def __init__(self, hub: "Hub", session_id: UUID, base: int) -> None:
        self.hub = hub
        self.session_id = session_id
        self.base = base
        self.frames: list[Frame] = []
        self.local: set[Follower] = set()
        # Sockets of other processes: their channels.
        self.remote: set[str] = set()
        # Channels that asked to stop: a follow request still replaying must not add them back.
        self.unfollowed: set[str] = set()
        self.turn: Turn | None = None
        self.ended = False
        # Run once the turn has ended, whatever ended it (a socket's deferred leave).
        self.after_end: list[Callable[[], Awaitable[None]]] = []
        self._unattended: asyncio.TimerHandle | None = None

    @property
    def last_seq(self) -> int:
        return self.base + len(self.frames)

    def after(self, frame_seq: int) -> list[Frame]:
        """Return the frames numbered after `frame_seq`."""
        return self.frames[max(0, frame_seq - self.base) :]

    async def publish(self, frame: dict[str, Any]) -> None:
        """Number the frame (in place), keep it, and send it to every follower (and the staff watching)."""
        seq = frame["frame_seq"] = self.last_seq + 1
        numbered = (seq, frame["type"], json.dumps(frame, default=str))
        self.frames.append(numbered)
        # The usual case, one socket of this process and nobody watching, costs one call.
        for follower in tuple(self.local):
            await follower.frame_deliver(numbered)
        if self.remote:
            for channel in list(self.remote):
                await self._remote_send(channel, numbered)
        if self.hub.watched_until:
            await self.hub.watchers_send(self.session_id, numbered[2])

    async def _remote_send(self, channel: str, frame: Frame | None) -> bool:
        """Send a frame (None: the `turn.following` answer) to a socket of another process.

        A channel that fails stops being followed; its socket notices the
        silence and asks again (see `SessionConsumer._follow_check`).
        """
        message: dict[str, Any]
        if frame is None:
            message = {"type": "turn.following", "session_id": str(self.session_id), "owner": self.hub.channel}
        else:
            message = {"type": "turn.frame", "frame": list(frame), "owner": self.hub.channel}
        try:
            async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                await self.hub.layer.send(channel, message)
        except Exception as exc:
            logger.warning(
                "session %s: stopped sending frames to %s (%s: %s)", self.session_id, channel, type(exc).__name__, exc
            )
            self.remote.discard(channel)
            self.attendance_check()
            return False
        return True

    async def local_follow(self, follower: Follower) -> None:
        """Send a socket of this process the frames it has not had, then each new one."""
        position = follower.frame_seq_sent
        while missing := self.after(position):
            for frame in missing:
                await follower.frame_deliver(frame)
                position = frame[0]
        # No await between the last check and this: no frame can slip between.
        self.local.add(follower)
        self.attendance_check()

    async def remote_follow(self, channel: str, after: int) -> None:
        """Send a socket of another process the frames after `after`, then each new one.

        Asked again by a socket already following (it missed frames, or heard
        nothing for a while), this sends what it asks for again: the socket
        drops what it has.
        """
        if not await self._remote_send(channel, None):
            return
        position = after
        while missing := self.after(position):
            for frame in missing:
                if not await self._remote_send(channel, frame):
                    return
                position = frame[0]
        if channel in self.unfollowed:
            return  # it left while this was replaying
        self.remote.add(channel)
        self.attendance_check()

    def unfollow(self, follower: Follower | None = None, channel: str | None = None) -> None:
        """A socket no longer follows (it left)."""
        if follower is not None:
            self.local.discard(follower)
        if channel is not None:
            self.remote.discard(channel)
            self.unfollowed.add(channel)
        self.attendance_check()

    def attendance_check(self) -> None:
        """Stop the reply after CHAT_UNATTENDED_REPLY_SECONDS with no socket following; cancel that when one is."""
        if self.ended or self.local or self.remote:
            if self._unattended is not None:
                self._unattended.cancel()
                self._unattended = None
            return
        if self._unattended is None:
            delay = max(0.0, settings.CHAT_UNATTENDED_REPLY_SECONDS)
            self._unattended = asyncio.get_running_loop().call_later(delay, self._unattended_stop)

    def _unattended_stop(self) -> None:
        self._unattended = None
        if not (self.ended or self.local or self.remote) and self.turn is not None:
            logger.info("session %s: stopping a reply nobody follows", self.session_id)
            self.turn.cancel(CLIENT_GONE)

    def end(self) -> None:
        """The turn is over (its `done` is published); keep the frames a while for sockets resuming late."""
        self.ended = True
        self.attendance_check()
        asyncio.get_running_loop().call_later(settings.CHAT_RESUME_GRACE_SECONDS, self.hub.stream_drop, self)


class Hub:
    """This event loop's streams, its sockets per session, and its channel for turn requests from elsewhere."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        self.streams: dict[UUID, Stream] = {}
        self.sockets: dict[UUID, set[Follower]] = defaultdict(set)
        self.watched_until: dict[UUID, float] = {}
        # Sessions whose group this process's channel joined (announced turns), left when their stream goes.
        self.grouped: set[UUID] = set()
        self.channel = ""
        self._channel_lock = asyncio.Lock()
        self._receiving: asyncio.Task | None = None
        # Tasks nobody awaits, kept referenced until they end.
        self._tasks: set[asyncio.Task] = set()

    def _spawn(self, coroutine: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed", task.get_name(), exc_info=task.exception())

    # --- Sockets of this process ----------------------------------------------------------------

    def socket_add(self, session_id: UUID, follower: Follower) -> None:
        self.sockets[session_id].add(follower)

    def socket_discard(self, session_id: UUID, follower: Follower) -> None:
        sockets = self.sockets.get(session_id)
        if sockets is not None:
            sockets.discard(follower)
            if not sockets:
                del self.sockets[session_id]
        stream = self.streams.get(session_id)
        if stream is not None:
            stream.unfollow(follower=follower)

    # --- Turns run here ---------------------------------------------------------------------------

    def turn_running(self, session_id: UUID) -> bool:
        """Whether this process runs a turn of the session that still holds it."""
        stream = self.streams.get(session_id)
        return stream is not None and stream.turn is not None and stream.turn.running()

    def stream_open(self, session_id: UUID, base: int) -> Stream:
        """Start a turn's stream; this process's sockets of the session follow it from the start."""
        stream = Stream(self, session_id, base)
        self.streams[session_id] = stream
        stream.local.update(self.sockets.get(session_id, ()))
        stream.attendance_check()
        return stream

    def stream_drop(self, stream: Stream) -> None:
        if self.streams.get(stream.session_id) is not stream:
            return  # a later turn of the session runs here now
        del self.streams[stream.session_id]
        if stream.session_id in self.grouped:
            self.grouped.discard(stream.session_id)
            self._spawn(self._group_leave(stream.session_id), "turn-group-leave")

    async def _group_leave(self, session_id: UUID) -> None:
        try:
            async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                await self.layer.group_discard(session_group(session_id), self.channel)
        except Exception:
            logger.warning("could not leave the group of session %s", session_id, exc_info=True)

    def turn_start(self, stream: Stream, turn: Turn) -> None:
        """Run the turn on the stream; once it has ended, end the stream and run its `after_end`."""
        stream.turn = turn
        self._spawn(self._turn_follow_through(stream, turn), f"turn-{stream.session_id}")

    async def _turn_follow_through(self, stream: Stream, turn: Turn) -> None:
        try:
            await turn.wait()
        finally:
            stream.end()
            for callback in stream.after_end:
                try:
                    await callback()
                except Exception:
                    logger.exception("session %s: could not finish after its turn", stream.session_id)

    def turn_announce_soon(self, session_id: UUID, base: int) -> None:
        """Announce the turn in the background: the socket that started it goes on meanwhile (its `stop` too)."""
        self._spawn(self.turn_announce(session_id, base), "turn-announce")

    async def turn_announce(self, session_id: UUID, base: int) -> None:
        """Tell the session's sockets in other processes that a turn started here, so they follow it.

        This process's channel joins the session's group while the turn's
        frames are kept, so staff asking to watch the session reach it even
        when none of the session's sockets is connected here.
        """
        if not self.channel:
            return
        group = session_group(session_id)
        started = {"type": "turn.started", "session_id": str(session_id), "owner": self.channel, "base": base}
        try:
            async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                await self.layer.group_add(group, self.channel)
            self.grouped.add(session_id)
            async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                await self.layer.group_send(group, started)
        except Exception:
            logger.warning("could not announce the turn of session %s to its other sockets", session_id, exc_info=True)

    def turn_stop_local(self, session_id: UUID) -> bool:
        """Stop the session's turn if it runs here; return whether it does."""
        stream = self.streams.get(session_id)
        if stream is None or stream.turn is None or stream.ended:
            return False
        stream.turn.cancel(STOP)
        return True

    # --- Requests from other processes --------------------------------------------------------------

    async def channel_name(self) -> str:
        """Return this process's channel for turn requests, opening it (and its receive loop) on first use."""
        async with self._channel_lock:
            if not self.channel:
                # The default prefix: channels_redis reads a process's channels of one
                # prefix through one lock, and a second prefix would starve the first.
                self.channel = await self.layer.new_channel()
                self._receiving = asyncio.create_task(self._receive_forever(), name="turn-requests")
        return self.channel

    async def _receive_forever(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # see chat.layers
                # The layer is down (Redis restarting): requests wait in it meanwhile.
                logger.warning("could not receive turn requests (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(1.0)
                continue
            try:
                await self._request_handle(message)
            except Exception:
                logger.exception("could not handle a %s request", message.get("type"))

    async def _request_handle(self, message: dict[str, Any]) -> None:
        session_id = UUID(message["session_id"])
        stream = self.streams.get(session_id)
        kind = message.get("type")
        if kind == "watch.start":
            self.watch_renew(session_id)
        elif kind == "turn.stop":
            self.turn_stop_local(session_id)
        elif kind == "turn.follow":
            if stream is None:
                gone = {"type": "turn.gone", "session_id": str(session_id), "owner": self.channel}
                async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
                    await self.layer.send(message["channel"], gone)
            else:
                # Its own task: replaying must not hold up the other requests. An unfollow
                # handled before that task ends keeps it from adding the channel.
                stream.unfollowed.discard(message["channel"])
                self._spawn(stream.remote_follow(message["channel"], int(message["after"])), "turn-follow")
        elif kind == "turn.unfollow" and stream is not None:
            stream.unfollow(channel=message["channel"])

    async def request_send(self, owner: str, message: dict[str, Any]) -> None:
        """Send a request to the process running a turn (`owner`: its channel)."""
        async with asyncio.timeout(LAYER_TIMEOUT_SECONDS):
            await self.layer.send(owner, message)

    # --- Staff watching ------------------------------------------------------------------------------

    def watch_renew(self, session_id: UUID) -> None:
        now = time.monotonic()
        if len(self.watched_until) > WATCHED_PRUNE_AT:
            # Sessions watched once and never again: forget them.
            self.watched_until = {key: until for key, until in self.watched_until.items() if until > now}
        self.watched_until[session_id] = now + WATCH_LEASE_SECONDS

    async def watchers_send(self, session_id: UUID, text: str) -> None:
        """Copy a frame to the staff watching the session, if any watch now (no traffic otherwise)."""
        until = self.watched_until.get(session_id)
        if until is None:
            return
        if until < time.monotonic():
            del self.watched_until[session_id]
            return
        try:
            async with asyncio.timeout(WATCH_SEND_TIMEOUT_SECONDS):
                await self.layer.group_send(watch_group(session_id), {"type": "watch.frame", "text": text})
        except Exception:
            # Watching is a convenience: it never breaks the chat.
            logger.warning("could not copy a frame to the watchers of session %s", session_id, exc_info=True)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = weakref.WeakKeyDictionary()


async def hub_close() -> list[asyncio.Task]:
    """Stop the running event loop's hub, if it has one: its request loop and its background tasks.

    daphne never needs this (its loop lasts as long as the process); an event
    loop that ends while the hub still reads from Redis (a test's) would
    otherwise wait at its close for a read that took no notice of its cancel.
    Each task is cancelled once and given HUB_CLOSE_SECONDS to end (a turn
    records its stopped reply on the way out). One that outlives that lost
    its cancel (see `chat.redis_options` for how that happened): it is
    logged, cancelled again until it ends (or another HUB_CLOSE_SECONDS
    pass), and returned, so a test can fail on it.
    """
    loop = asyncio.get_running_loop()
    found = _hubs.pop(loop, None)
    if found is None:
        return []
    tasks = {task for task in (found._receiving, *found._tasks) if task is not None and not task.done()}
    if not tasks:
        return []
    for task in tasks:
        task.cancel()
    _, pending = await asyncio.wait(tasks, timeout=HUB_CLOSE_SECONDS)
    stubborn = list(pending)
    if pending:
        logger.warning("the chat hub's tasks outlived their cancel: %s", pending)
    deadline = loop.time() + HUB_CLOSE_SECONDS
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    return stubborn


def hub() -> Hub:
    """Return the running event loop's hub."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(loop)
    if found is None:
        found = _hubs[loop] = Hub()
    return found
