"""Serve the app with several daphne processes on one listening socket: `python -m llmbacker.serve`.

One daphne process runs one event loop on one core. This binds the port
once and starts `--processes` daphne processes (default: WEB_PROCESSES, else
1) that all accept on it (daphne's `--fd`): the kernel hands each new
connection to whichever process accepts first, so the handshakes and the
turns spread over the cores. The processes share nothing but PostgreSQL and
Redis, which is what the app expects of several daphne processes anyway
(leases, turn claims and the channel layer are all shared there; see the
README, "Replies that outlive the socket"). Several processes need a shared
channel layer, so without REDIS_URL only one is started.

A process that exits is started again (after a second); SIGTERM or SIGINT
stops them all, and a launcher that is killed takes them with it. With
PROMETHEUS_MULTIPROC_DIR set, the live gauges (open sockets) of earlier runs
are cleared at start and a process's are dropped when it exits. Arguments after `--` go to every daphne unchanged.
"""

import argparse
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time

RESTART_DELAY_SECONDS = 1.0
PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_SECONDS = 10.0


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    """In the child: be sent SIGTERM when the launcher dies, even killed (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def live_gauges_drop(pid: int | str = "*") -> None:
    """Remove the live gauges' files of process `pid` (all of them: "*") from PROMETHEUS_MULTIPROC_DIR."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)


def daphne(fd: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "daphne", "--fd", str(fd), *extra, "llmbacker.asgi:application"]
    # preexec_fn: the launcher runs no thread of its own.
    return subprocess.Popen(command, pass_fds=[fd], preexec_fn=_die_with_parent)  # noqa: S603, PLW1509


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("-p", "--port", type=int, default=8000)
    parser.add_argument(
        "--processes", type=int, default=int(os.environ.get("WEB_PROCESSES") or 1), help="daphne processes"
    )
    parser.add_argument("extra", nargs="*", help="arguments for daphne (after --)")
    options = parser.parse_args(argv)
    processes = max(1, options.processes)
    if processes > 1 and not os.environ.get("REDIS_URL"):
        print("llmbacker.serve: REDIS_URL is not set; one process only (the in-memory layer is per process)")
        processes = 1
    sock = listening_socket(options.bind, options.port)
    live_gauges_drop()
    children = [daphne(sock.fileno(), options.extra) for _ in range(processes)]
    print(f"llmbacker.serve: {processes} daphne process(es) on http://{options.bind}:{options.port}", flush=True)
    stopping = False

    def stop(number: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        time.sleep(0.2)
        for index, child in enumerate(children):
            if child.poll() is not None and not stopping:
                print(f"llmbacker.serve: daphne {child.pid} exited with {child.returncode}; starting another")
                live_gauges_drop(child.pid)
                time.sleep(RESTART_DELAY_SECONDS)
                children[index] = daphne(sock.fileno(), options.extra)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        live_gauges_drop(child.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
