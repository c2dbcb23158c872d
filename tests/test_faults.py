"""Fault injection on a stack of the tests' own: daphne on a private PostgreSQL and a private Redis.

Each fault (PostgreSQL or Redis restarted mid-turn, a frame that breaks the
parser, the Redis pool exhausted by a burst of closes, daphne killed
mid-reply) must leave the record whole: every session ends on its last close
or within the sweep's lease, no turn stays claimed, every started turn has
exactly one assistant event, seqs stay contiguous, one summary per ended
session. The shared PostgreSQL and Redis are never touched. A Celery worker
killed mid-summary is covered in test_worker.py.
"""

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from .conftest import ARTIFACTS, REPO, daphne_start, free_port, process_stop, subprocess_env, visitor_cookie

pytestmark = pytest.mark.asyncio

LEASE_SECONDS = 2


@dataclass
class Stack:
    """Daphne (restartable) on the private services, and how to reach it."""

    env: dict[str, str]
    database_url: str
    port: int = 0
    process: subprocess.Popen | None = None
    # Where this stack's lines start in the log that every stack of the module appends to.
    log_offset: int | None = None

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.port = free_port()
        log = open(ARTIFACTS / "daphne-faults.log", "ab")  # noqa: SIM115 (the process keeps it)
        if self.log_offset is None:
            self.log_offset = log.tell()
        self.process = daphne_start(port=self.port, log=log, env=self.env)

    def log(self) -> str:
        """Return what this stack's daphne has logged so far."""
        with open(ARTIFACTS / "daphne-faults.log", "rb") as log:
            log.seek(self.log_offset or 0)
            return log.read().decode(errors="replace")

    def kill(self) -> None:
        """Kill daphne at once, as a crash would: no cleanup runs."""
        assert self.process is not None, "the stack was not started"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            process_stop(self.process)

    def run_python(self, code: str) -> str:
        """Run Django code in a process of its own on the stack's settings; return what it printed."""
        setup = "import django; django.setup()\n"
        done = subprocess.run(
            [sys.executable, "-c", setup + code], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def cookie(self) -> str:
        """Return a visitor's session cookie, from the chat page as a browser gets it."""
        return visitor_cookie(f"http://127.0.0.1:{self.port}")

    async def open(self, session_id: uuid.UUID | None = None, cookie: str | None = None) -> "Chat":
        session_id = session_id or uuid.uuid4()
        socket = await connect(
            f"ws://127.0.0.1:{self.port}/ws/session/{session_id}/",
            origin=Origin(f"http://127.0.0.1:{self.port}"),
            additional_headers={"Cookie": cookie} if cookie else None,
            open_timeout=15,
        )
        chat = Chat(session_id=session_id, socket=socket)
        assert (await chat.receive())["type"] == "session"
        return chat


@dataclass
class Chat:
    session_id: uuid.UUID
    socket: ClientConnection

    async def receive(self, timeout: float = 30) -> dict:
        return json.loads(await asyncio.wait_for(self.socket.recv(), timeout))

    async def until(self, frame_type: str, timeout: float = 60) -> list[dict]:
        frames = []
        while True:
            frames.append(await self.receive(timeout))
            if frames[-1]["type"] == frame_type:
                return frames

    async def send(self, frame: dict) -> None:
        await self.socket.send(json.dumps(frame))


def stack_env(*, database_url: str, redis_url: str, groq_url: str, **extra: str) -> dict[str, str]:
    return subprocess_env(
        groq_url=groq_url,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        # No broker: summaries are written in daphne's own task thread.
        CELERY_BROKER_URL="",
        CHAT_SOCKET_LEASE_SECONDS=str(LEASE_SECONDS),
        CHAT_DB_RETRY_SECONDS="30",
        CHAT_RATE_LIMIT_MESSAGES="0",
        CHAT_RATE_LIMIT_ADDRESS_MESSAGES="0",
        CHAT_MAX_SOCKETS_PER_ADDRESS="0",
        **extra,
    )


@pytest.fixture(scope="module")
def private_stack_env(private_postgres, private_redis, fake_groq_server) -> dict[str, str]:
    """The environment of a stack on the private services, with the schema migrated."""
    env = stack_env(database_url=private_postgres.url(), redis_url=private_redis.url(), groq_url=fake_groq_server.url)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, env=env, check=True, capture_output=True
    )
    return env


@pytest.fixture
def stack(private_stack_env, private_postgres) -> Iterator[Stack]:
    running = Stack(env=private_stack_env, database_url=private_postgres.url())
    running.start()
    yield running
    running.stop()


def record_problems(database_url: str, session_ids: list[uuid.UUID]) -> list[str]:
    """Return what is wrong with the record of these sessions (nothing, when it is whole)."""
    problems = []
    with psycopg.connect(database_url.replace("postgres://", "postgresql://", 1)) as conn:
        for session_id in session_ids:
            row = conn.execute(
                "SELECT status, turn_lease, next_seq, message_count FROM audit_chatsession WHERE id = %s",
                (session_id,),
            ).fetchone()
            if row is None:
                problems.append(f"{session_id}: no session")
                continue
            status, turn_lease, next_seq, message_count = row
            if status != "ended":
                problems.append(f"{session_id}: {status}, not ended")
            if turn_lease is not None:
                problems.append(f"{session_id}: turn still claimed")
            events = conn.execute(
                "SELECT seq, type FROM audit_event WHERE session_id = %s ORDER BY seq", (session_id,)
            ).fetchall()
            if [seq for seq, _ in events] != list(range(1, next_seq)):
                problems.append(f"{session_id}: seqs {[seq for seq, _ in events]}, next_seq {next_seq}")
            # Every user message is followed by exactly one assistant event before the next one.
            replies = None
            for _, kind in events:
                if kind == "user_message":
                    if replies is not None and replies != 1:
                        problems.append(f"{session_id}: a turn with {replies} assistant events")
                    replies = 0
                elif kind == "assistant_message":
                    replies = (replies or 0) + 1
            if replies is not None and replies != 1:
                problems.append(f"{session_id}: the last turn has {replies} assistant events")
            summaries = conn.execute("SELECT status FROM audit_summary WHERE session_id = %s", (session_id,)).fetchall()
            if message_count and summaries != [("done",)]:
                problems.append(f"{session_id}: summaries {summaries}")
    return problems


async def record_whole(stack: Stack, session_ids: list[uuid.UUID], timeout: float = 30) -> None:
    """Wait for the sessions to end and be summarized; fail with what is still wrong."""
    deadline = time.monotonic() + timeout
    while problems := await asyncio.to_thread(record_problems, stack.database_url, session_ids):
        assert time.monotonic() < deadline, problems
        await asyncio.sleep(0.25)


def text_of(frames: list[dict]) -> str:
    return "".join(frame["content"] for frame in frames if frame["type"] == "token")


async def chats_mid_reply(stack: Stack, count: int = 4) -> list[Chat]:
    """Open `count` sessions and start a slow reply on each; return once every one has streamed a token."""
    chats = [await stack.open() for _ in range(count)]
    for chat in chats:
        await chat.send({"type": "message", "content": "slow story please"})
    for chat in chats:
        await chat.until("token")
    return chats


async def test_postgres_restarted_mid_turn_loses_no_reply(stack, private_postgres):
    chats = await chats_mid_reply(stack)
    # Fast shutdown: every connection is cut, as in a crash or a failover.
    await asyncio.to_thread(private_postgres.stop)
    await asyncio.sleep(1)
    await asyncio.to_thread(private_postgres.start)
    for chat in chats:
        frames = await chat.until("done")
        assert not [f for f in frames if f["type"] == "error"], frames
    # The next turn works at once on every socket.
    for chat in chats:
        await chat.send({"type": "message", "content": "and after?"})
        assert text_of(await chat.until("done")) == "You said: and after?"
    for chat in chats:
        await chat.socket.close()
    await record_whole(stack, [chat.session_id for chat in chats])


async def test_redis_restarted_mid_turn_keeps_the_sockets_open(stack, private_redis):
    chats = await chats_mid_reply(stack)
    await asyncio.to_thread(private_redis.stop)
    await asyncio.sleep(1)
    await asyncio.to_thread(private_redis.start)
    for chat in chats:
        frames = await chat.until("done")
        assert frames[-1]["stopped"] is False
    for chat in chats:
        await chat.send({"type": "ping"})
        assert (await chat.until("pong"))[-1] == {"type": "pong"}
        await chat.send({"type": "message", "content": "still there?"})
        assert text_of(await chat.until("done")) == "You said: still there?"
    for chat in chats:
        await chat.socket.close()
    await record_whole(stack, [chat.session_id for chat in chats])


async def test_a_frame_that_breaks_the_parser_is_an_error_and_the_socket_stays(stack):
    chat = await stack.open()
    await chat.socket.send("[" * 20_000)
    frame = await chat.receive()
    assert frame["type"] == "error" and frame["code"] in ("invalid_json", "invalid_message"), frame
    await chat.send({"type": "message", "content": "hello"})
    assert text_of(await chat.until("done")) == "You said: hello"
    await chat.socket.close()
    await record_whole(stack, [chat.session_id])


@pytest.fixture
def small_pool_stack(private_stack_env, private_postgres) -> Iterator[Stack]:
    """A daphne whose channel layer may open only two Redis connections."""
    running = Stack(env={**private_stack_env, "REDIS_MAX_CONNECTIONS": "2"}, database_url=private_postgres.url())
    running.start()
    yield running
    running.stop()


async def test_a_burst_of_closes_on_an_exhausted_redis_pool_still_ends_every_session(small_pool_stack):
    """30 sockets closing at once, through two connections: each waits for a free one (a plain pool raised)."""
    chats = [await small_pool_stack.open() for _ in range(30)]
    for chat in chats:
        await chat.send({"type": "message", "content": "hi"})
    for chat in chats:
        await chat.until("done")
    await asyncio.gather(*(chat.socket.close() for chat in chats))
    await record_whole(small_pool_stack, [chat.session_id for chat in chats])
    log = small_pool_stack.log()
    assert "MaxConnectionsError" not in log and "Too many connections" not in log
    assert "No connection available" not in log  # no command gave up waiting for one of the two
    assert "could not join the group" not in log and "could not leave the group" not in log


async def test_daphne_killed_mid_reply_leaves_no_stuck_turn_and_no_open_session(stack):
    cookie = await asyncio.to_thread(stack.cookie)
    resumed = await stack.open(cookie=cookie)
    abandoned = await stack.open()
    for chat in (resumed, abandoned):
        await chat.send({"type": "message", "content": "slow story please"})
        await chat.until("token")
    stack.kill()
    await asyncio.to_thread(stack.start)
    # The visitor comes back to the session: once the dead socket's lease has
    # run out, the turn it claimed is taken over and closed in the record.
    await asyncio.sleep(LEASE_SECONDS + 0.5)
    back = await stack.open(session_id=resumed.session_id, cookie=cookie)
    await back.send({"type": "message", "content": "are you back?"})
    assert text_of(await back.until("done")) == "You said: are you back?"
    await back.socket.close()
    # Nobody comes back to the other: the sweep ends it once its lease has
    # been out for a lease length (a process that only stalled keeps its sessions).
    await asyncio.sleep(LEASE_SECONDS + 0.5)
    swept = stack.run_python(
        "from audit.tasks import local_tasks, sessions_sweep\n"
        "print(sessions_sweep())\n"
        "local_tasks._executor.shutdown(wait=True)  # the summary it queued, written in process\n"
    )
    assert "'ended': 1" in swept, swept
    await record_whole(stack, [resumed.session_id, abandoned.session_id])
    with psycopg.connect(stack.database_url.replace("postgres://", "postgresql://", 1)) as conn:
        reasons = conn.execute(
            "SELECT data->>'stop_reason' FROM audit_event WHERE type = 'assistant_message' AND session_id = ANY(%s)",
            ([resumed.session_id, abandoned.session_id],),
        ).fetchall()
    assert sorted(reason or "" for (reason,) in reasons) == ["", "server_lost", "server_lost"]
