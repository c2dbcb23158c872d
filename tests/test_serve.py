"""`python -m llmbacker.serve`: several daphne processes on one socket, restarted when one dies."""

import json
import signal
import subprocess
import sys
import time
import uuid
from urllib.request import urlopen

import psutil
import pytest
from websockets.sync.client import connect
from websockets.typing import Origin

from .conftest import ARTIFACTS, REPO, free_port, on_redis, port_wait, service_missing, subprocess_env, visitor_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def daphnes_of(serve: subprocess.Popen) -> list[psutil.Process]:
    """The live daphne processes under `llmbacker.serve` (not one that died and is not reaped yet)."""
    found = []
    for child in psutil.Process(serve.pid).children():
        try:
            if "daphne" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            continue
    return found


def daphnes_wait(serve: subprocess.Popen, count: int, timeout: float = 20) -> list[psutil.Process]:
    """Wait until `count` daphne processes run under the launcher (it listens before starting them)."""
    deadline = time.monotonic() + timeout
    while len(found := daphnes_of(serve)) != count:
        assert time.monotonic() < deadline, f"{len(found)} daphne processes, not {count}"
        time.sleep(0.1)
    return found


def one_turn(port: int, cookie: str) -> str:
    """Chat one turn over a socket of the served app; return the reply's text."""
    with connect(
        f"ws://127.0.0.1:{port}/ws/session/{uuid.uuid4()}/",
        origin=Origin(f"http://127.0.0.1:{port}"),
        additional_headers={"Cookie": cookie},
        open_timeout=15,
    ) as socket:
        assert json.loads(socket.recv(timeout=15))["type"] == "session"
        socket.send(json.dumps({"type": "message", "content": "hello"}))
        text = ""
        while (frame := json.loads(socket.recv(timeout=15)))["type"] != "done":
            text += frame.get("content", "") if frame["type"] == "token" else ""
        return text


def test_several_daphne_processes_share_the_port_and_one_that_dies_is_replaced(fake_groq_server, tmp_path):
    if not on_redis():
        service_missing("several processes need the Redis channel layer")
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    # A live gauge left by an earlier run is cleared at start.
    stale = tmp_path / "gauge_livesum_999999.db"
    stale.write_bytes(b"")
    with open(ARTIFACTS / "serve.log", "ab") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "llmbacker.serve", "-p", str(port), "--processes", "2"],
            cwd=REPO,
            env=subprocess_env(groq_url=fake_groq_server.url, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            port_wait(port, serve)
            daphnes_wait(serve, 2)
            assert not stale.exists()
            cookie = visitor_cookie(f"http://127.0.0.1:{port}")
            assert one_turn(port, cookie) == "You said: hello"
            victim = daphnes_of(serve)[0]
            victim.kill()
            deadline = time.monotonic() + 20
            while victim.pid in [p.pid for p in daphnes_of(serve)] or len(daphnes_of(serve)) < 2:
                assert time.monotonic() < deadline, "the dead daphne was not replaced"
                time.sleep(0.2)
            assert not (tmp_path / f"gauge_livesum_{victim.pid}.db").exists()
            # Every connection is served, whichever process takes it.
            for _ in range(4):
                assert one_turn(port, cookie) == "You said: hello"
            # /metrics adds up every process's figures, the dead one's turns included.
            with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:  # noqa: S310 (local)
                figures = response.read().decode()
            assert "llmbacker_turns_started_total 5.0" in figures.splitlines()
            assert "llmbacker_sockets_open 0.0" in figures.splitlines()
            children = daphnes_of(serve)
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=20) == 0
            assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]

        finally:
            if serve.poll() is None:
                for child in daphnes_of(serve):
                    child.kill()
                serve.kill()


def test_a_killed_launcher_takes_its_daphne_processes_with_it(fake_groq_server):
    if not on_redis():
        service_missing("several processes need the Redis channel layer")
    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "llmbacker.serve", "-p", str(port), "--processes", "2"],
        cwd=REPO,
        env=subprocess_env(groq_url=fake_groq_server.url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_wait(port, serve)
    children = daphnes_wait(serve, 2)
    serve.kill()
    serve.wait(timeout=10)
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive


def test_without_redis_one_process_serves(tmp_path):
    port = free_port()
    env = subprocess_env(groq_url=None)
    env.pop("REDIS_URL", None)
    serve = subprocess.Popen(
        [sys.executable, "-m", "llmbacker.serve", "-p", str(port), "--processes", "3"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port_wait(port, serve)
        daphnes_wait(serve, 1)
        time.sleep(1)  # and no second one follows
        assert len(daphnes_of(serve)) == 1
    finally:
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=20)
    assert "one process only" in output
