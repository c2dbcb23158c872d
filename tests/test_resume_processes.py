"""Two daphne processes on one PostgreSQL and one Redis: a reply resumed anywhere, seen everywhere, stopped anywhere."""

import asyncio
import json
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from unittest.mock import ANY

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from audit.models import Event, EventType, Summary

from .conftest import (
    ARTIFACTS,
    daphne_start,
    free_port,
    on_redis,
    process_stop,
    service_missing,
    subprocess_env,
    visitor_cookie,
)
from .fake_groq import FakeGroq, text_reply

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

TEXT = " ".join(f"w{n}" for n in range(40))
RUNS = 100


FOLLOW_SILENCE_SECONDS = 1


@pytest.fixture(scope="module")
def daphne_env(django_db_setup, django_db_blocker, fake_groq_server: FakeGroq) -> dict[str, str]:
    if not on_redis():
        service_missing("two processes share a running turn only through the Redis channel layer")
    with django_db_blocker.unblock():
        return subprocess_env(
            groq_url=fake_groq_server.url,
            CELERY_BROKER_URL="",
            CHAT_RATE_LIMIT_MESSAGES="0",
            CHAT_RATE_LIMIT_ADDRESS_MESSAGES="0",
            CHAT_TOKEN_BUDGET_PER_DAY="0",
            CHAT_FOLLOW_SILENCE_SECONDS=str(FOLLOW_SILENCE_SECONDS),
        )


@pytest.fixture(scope="module")
def two_daphnes(daphne_env: dict[str, str]) -> Iterator[list[int]]:
    """Two daphne processes sharing the test database and Redis; yield their ports."""
    env = daphne_env
    ARTIFACTS.mkdir(exist_ok=True)
    processes: list[subprocess.Popen] = []
    ports = []
    log = open(ARTIFACTS / "daphne-resume.log", "ab")  # noqa: SIM115 (closed below)
    try:
        for _ in range(2):
            port = free_port()
            processes.append(daphne_start(port=port, log=log, env=env))
            ports.append(port)
        yield ports
    finally:
        for process in processes:
            process_stop(process)
        log.close()


def cookie_of(port: int) -> str:
    return visitor_cookie(f"http://127.0.0.1:{port}")


class Socket:
    """A chat socket to one of the processes."""

    def __init__(self, ws: ClientConnection, session: dict) -> None:
        self.ws = ws
        self.session = session

    @classmethod
    async def open(cls, port: int, session_id: uuid.UUID, cookie: str, after: int | None = None) -> "Socket":
        query = f"?after={after}" if after is not None else ""
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws/session/{session_id}/{query}",
            origin=Origin(f"http://127.0.0.1:{port}"),
            additional_headers={"Cookie": cookie},
            open_timeout=15,
        )
        session = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert session["type"] == "session", session
        return cls(ws, session)

    async def receive(self, timeout: float = 15) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def until(self, frame_type: str, context: str = "") -> list[dict]:
        frames: list[dict] = []
        while not frames or frames[-1]["type"] != frame_type:
            try:
                frames.append(await self.receive())
            except TimeoutError:
                raise AssertionError(f"{context}: no {frame_type!r} frame; received {frames}") from None
        return frames

    async def send(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))


def seqs_of(frames: list[dict]) -> list[int]:
    return [frame["frame_seq"] for frame in frames if "frame_seq" in frame]


def text_of(frames: list[dict]) -> str:
    return "".join(frame["content"] for frame in frames if frame["type"] == "token")


@sync_to_async
def replies_of(session_id) -> list[str]:
    events = Event.objects.filter(session_id=session_id, type=EventType.ASSISTANT_MESSAGE).order_by("seq")
    return list(events.values_list("content", flat=True))


@sync_to_async
def summarized(session_id) -> bool:
    return Summary.objects.filter(session_id=session_id).exists()


async def summary_wait(session_id, timeout: float = 30) -> None:
    """Wait for the ended session's summary: its model call must not land in the next test's fake Groq queue."""
    deadline = time.monotonic() + timeout
    while not await summarized(session_id):
        assert time.monotonic() < deadline, "the session was never summarized"
        await asyncio.sleep(0.1)


async def test_a_reply_cut_at_any_token_and_resumed_on_either_process_is_whole(two_daphnes, fake_groq):
    """100 replies, each cut at a random token and picked up on a random process; a third socket sees them all."""
    rng = random.Random(9)  # a fixed seed: a failure can be replayed
    session_id = uuid.uuid4()
    cookie = cookie_of(two_daphnes[0])
    # A tab that stays open on the first process the whole time, reading everything.
    watcher = await Socket.open(two_daphnes[0], session_id, cookie)
    watched: list[dict] = []

    all_seen = asyncio.Event()

    async def watch() -> None:
        while True:
            watched.append(await watcher.receive(timeout=120))
            if [frame["type"] for frame in watched].count("done") == RUNS:
                all_seen.set()

    watching = asyncio.create_task(watch())
    words = len(TEXT.split())
    position = 0
    ended_before_resume = 0
    try:
        for run in range(RUNS):
            fake_groq.enqueue(text_reply(TEXT, delay=0.003))
            cut_after = rng.randint(1, words - 1)
            sender = await Socket.open(rng.choice(two_daphnes), session_id, cookie, after=position)
            await sender.send({"type": "message", "content": f"run {run}"})
            before: list[dict] = []
            while sum(frame["type"] == "token" for frame in before) < cut_after:
                before.append(await sender.receive())
            await sender.ws.close()
            cut_at = seqs_of(before)[-1]
            again = await Socket.open(rng.choice(two_daphnes), session_id, cookie, after=cut_at)
            context = f"run {run}: cut after {cut_after} tokens at frame {cut_at}"
            if not again.session["turn_running"]:
                # The turn ended between the cut and the reconnect (a cut near the last token):
                # the session frame's history then holds the whole reply, and no frame follows.
                assert again.session["frame_seq"] > cut_at, context
                assert again.session["history"][-2:] == [
                    {"role": "user", "content": f"run {run}", "created_at": ANY},
                    {"role": "assistant", "content": TEXT, "created_at": ANY, "turn_id": ANY, "feedback": None},
                ], context
                position = again.session["frame_seq"]
                ended_before_resume += 1
                await again.ws.close()
                continue
            after = await again.until("done", f"{context}, session frame {again.session}, before {before}")
            frames = before + after
            seqs = seqs_of(frames)
            # The sender's own user_message frame is not echoed to it: its turn's frames start at base + 2.
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), context
            assert text_of(frames) == TEXT, context
            assert [frame["type"] for frame in frames].count("done") == 1, context
            assert frames[-1]["stopped"] is False, context
            position = seqs[-1]
            # The turn was released before `done`: the next message, on any process, is not `busy`.
            await again.ws.close()
        # The last turn's frames may still be on their way to the tab that stayed open.
        await asyncio.wait_for(all_seen.wait(), 15)
        # Nearly every run resumed a running turn (the race above is rare): the test tests resuming.
        assert ended_before_resume < RUNS // 10, ended_before_resume
    finally:
        watching.cancel()
    await watcher.ws.close()
    await summary_wait(session_id)
    # The recorded replies are whole.
    assert await replies_of(session_id) == [TEXT] * RUNS
    # The tab that stayed open saw every turn, each frame once, in order, whichever process ran it.
    seqs = seqs_of(watched)
    assert seqs == list(range(1, len(seqs) + 1))
    assert [frame["content"] for frame in watched if frame["type"] == "user_message"] == [
        f"run {run}" for run in range(RUNS)
    ]
    assert [frame["type"] for frame in watched].count("done") == RUNS
    assert text_of(watched) == TEXT * RUNS


async def test_stop_sent_through_the_other_process_closes_the_upstream(two_daphnes, fake_groq):
    session_id = uuid.uuid4()
    first, second = two_daphnes
    cookie = cookie_of(first)
    starter = await Socket.open(first, session_id, cookie)
    other = await Socket.open(second, session_id, cookie)
    fake_groq.enqueue(text_reply(" ".join(["slow"] * 400), delay=0.05))
    await starter.send({"type": "message", "content": "a long one"})
    frames = [await other.receive()]
    assert frames[0]["type"] == "user_message"
    while frames[-1]["type"] != "token":
        frames.append(await other.receive())
    stopped_at = time.monotonic()
    await other.send({"type": "stop"})
    # The bound: the model's stream is closed within 2 s of `stop`.
    assert await asyncio.to_thread(fake_groq.wait_outcome, 0, 2.0) == "client_closed"
    assert time.monotonic() - stopped_at < 2.0
    done_other = (await other.until("done"))[-1]
    done_starter = (await starter.until("done"))[-1]
    assert done_other["stopped"] is True and done_other == done_starter
    reply = (await replies_of(session_id))[0]
    assert reply and reply in " ".join(["slow"] * 400)
    await starter.ws.close()
    await other.ws.close()
    await summary_wait(session_id)


@pytest.fixture
def doomed_daphne(daphne_env: dict[str, str]) -> Iterator[tuple[int, subprocess.Popen]]:
    """A third daphne process on the same database and Redis, for a test to kill."""
    port = free_port()
    with open(ARTIFACTS / "daphne-resume.log", "ab") as log:
        process = daphne_start(port=port, log=log, env=daphne_env)
        try:
            yield port, process
        finally:
            if process.poll() is None:
                process_stop(process)


async def test_a_socket_following_a_reply_from_a_process_that_dies_is_told(two_daphnes, doomed_daphne, fake_groq):
    """The process running the reply is killed: the other process's socket notices the silence and says so."""
    port, doomed = doomed_daphne
    session_id = uuid.uuid4()
    cookie = cookie_of(two_daphnes[0])
    follower = await Socket.open(two_daphnes[0], session_id, cookie)
    starter = await Socket.open(port, session_id, cookie)
    fake_groq.enqueue(text_reply(" ".join(["slow"] * 400), delay=0.05))
    await starter.send({"type": "message", "content": "and then the lights went out"})
    seen = [await follower.receive()]
    while seen[-1]["type"] != "token":
        seen.append(await follower.receive())
    doomed.send_signal(signal.SIGKILL)
    await asyncio.to_thread(doomed.wait, 10)
    while seen[-1]["type"] not in ("error", "done"):
        seen.append(await follower.receive(timeout=FOLLOW_SILENCE_SECONDS * 2 + 10))
    assert (seen[-1]["type"], seen[-1]["code"]) == ("error", "reply_unavailable")
    # The socket goes on.
    await follower.send({"type": "ping"})
    assert (await follower.receive())["type"] == "pong"
    await follower.ws.close()
