"""The WebSocket clients of `make bench-load`: processes of their own, each holding a share of the sockets.

A client process runs one asyncio loop with the `websockets` library and
answers the commands the bench process sends it over a pipe (open every
socket at once, run one turn on each, ping, close), so the clients' CPU is
never counted as daphne's.
"""

import asyncio
import contextlib
import http.cookiejar
import json
import resource
import time
import uuid
from http.cookies import SimpleCookie
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

COOKIE_NAME = "sessionid"  # Django's SESSION_COOKIE_NAME, which the project leaves as is
MESSAGE = "Tell me a short story."
COOKIE_CONCURRENCY = 20  # page loads at once, per client process


def nofile_raise() -> None:
    """Raise this process's soft limit on open files to its hard limit: 1000+ sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Fleet:
    """One client process's share of the sockets, driven by commands from the bench process."""

    def __init__(self, *, base_url: str, count: int, cookie: bool, timeout: float) -> None:
        self.base_url = base_url
        self.count = count
        self.cookie = cookie
        self.timeout = timeout
        self.cookies: list[str | None] = [None] * count
        self.sockets: list[ClientConnection] = []

    async def serve(self, conn) -> None:
        """Run each command the bench process sends and send back its result, until None comes."""
        commands = {
            "warm_up": self.warm_up,
            "cookies_get": self.cookies_get,
            "sockets_open": self.sockets_open,
            "turns_run": self.turns_run,
            "sockets_ping": self.sockets_ping,
            "sockets_close": self.sockets_close,
        }
        while (command := await asyncio.to_thread(conn.recv)) is not None:
            conn.send(await commands[command]())

    async def _open(self, cookie: str | None) -> ClientConnection:
        """Open a socket on a new session id, as the page does, and read its `session` frame."""
        socket = await connect(
            f"ws{self.base_url.removeprefix('http')}/ws/session/{uuid.uuid4()}/",
            origin=Origin(self.base_url),
            additional_headers={"Cookie": f"{COOKIE_NAME}={cookie}"} if cookie else None,
            proxy=None,
            open_timeout=self.timeout,
            ping_interval=None,
        )
        try:
            frame = json.loads(await asyncio.wait_for(socket.recv(), self.timeout))
        except BaseException:
            await socket.close()
            raise
        if frame.get("type") != "session":
            await socket.close()
            raise RuntimeError(f"the first frame is {frame.get('type')} {frame.get('code', '')}")
        return socket

    async def _turn(self, socket: ClientConnection) -> dict[str, Any]:
        """Send one message and read its frames up to `done`; a turn fails without `done` or with an `error`."""
        started, first, tokens, errors = time.monotonic(), None, 0, []
        failure: str | None
        try:
            await socket.send(json.dumps({"type": "message", "content": MESSAGE}))
            async with asyncio.timeout(self.timeout):
                while True:
                    frame = json.loads(await socket.recv())
                    if frame["type"] == "token":
                        tokens += 1
                        first = first or time.monotonic()
                    elif frame["type"] == "error":
                        errors.append(frame.get("code"))
                    elif frame["type"] == "done":
                        break
        except TimeoutError:
            failure = f"no done within {self.timeout:g} s"
        except ConnectionClosed as exc:
            failure = f"closed with {exc.rcvd.code if exc.rcvd else 'no close frame'} before done"
        else:
            failure = f"error frame {','.join(map(str, errors))}" if errors else None
        return {
            "failure": failure,
            "tokens": tokens,
            "first_ms": (first - started) * 1000 if first else None,
            "whole_ms": (time.monotonic() - started) * 1000 if failure is None else None,
        }

    async def warm_up(self) -> str | None:
        """Open one socket, run one turn, close it: the first turn loads what later ones reuse."""
        try:
            socket = await self._open(None)
            outcome = await self._turn(socket)
            await socket.close()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return outcome["failure"]

    async def cookies_get(self) -> int:
        """GET `/` once per visitor, as a browser does, and keep its session cookie; return the failures."""
        if not self.cookie:
            return 0
        # The client's own jar refuses every cookie, so that the visitors' cookies stay apart.
        jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        limit = asyncio.Semaphore(COOKIE_CONCURRENCY)
        async with httpx.AsyncClient(base_url=self.base_url, cookies=jar, trust_env=False, timeout=60) as client:

            async def one(index: int) -> None:
                async with limit:
                    response = await client.get("/")
                cookies = SimpleCookie()
                for header in response.headers.get_list("set-cookie"):
                    cookies.load(header)
                if COOKIE_NAME in cookies:
                    self.cookies[index] = cookies[COOKIE_NAME].value

            await asyncio.gather(*(one(index) for index in range(self.count)), return_exceptions=True)
        return sum(cookie is None for cookie in self.cookies)

    async def sockets_open(self) -> dict[str, Any]:
        """Open every socket at once.

        Return when each began and got its `session` frame (monotonic clock,
        which all processes share), and each failure's reason with the seconds
        it took to fail.
        """
        started: list[float] = []
        accepted: list[float] = []
        failures: list[tuple[str, float]] = []

        async def one(cookie: str | None) -> None:
            began = time.monotonic()
            started.append(began)
            try:
                self.sockets.append(await self._open(cookie))
            except InvalidStatus as exc:
                failures.append((f"HTTP {exc.response.status_code}", time.monotonic() - began))
            except Exception as exc:
                failures.append((f"{type(exc).__name__}: {exc}"[:100], time.monotonic() - began))
            else:
                accepted.append(time.monotonic())

        await asyncio.gather(*(one(cookie) for cookie in self.cookies))
        return {"started": started, "accepted": accepted, "failures": failures}

    async def turns_run(self) -> list[dict[str, Any]]:
        """Run one turn on every open socket at once."""
        return await asyncio.gather(*(self._turn(socket) for socket in self.sockets))

    async def sockets_ping(self) -> int:
        """Ping every open socket; return how many answered `pong`."""

        async def one(socket: ClientConnection) -> bool:
            try:
                await socket.send(json.dumps({"type": "ping"}))
                async with asyncio.timeout(self.timeout):
                    while json.loads(await socket.recv())["type"] != "pong":
                        pass
            except (TimeoutError, ConnectionClosed):
                return False
            return True

        return sum(await asyncio.gather(*(one(socket) for socket in self.sockets)))

    async def sockets_close(self) -> None:
        """Close every socket at once."""
        await asyncio.gather(*(socket.close() for socket in self.sockets), return_exceptions=True)
        self.sockets.clear()


def fleet_main(conn, options: dict[str, Any]) -> None:
    """The client process: its sockets, driven from the pipe."""
    nofile_raise()
    asyncio.run(Fleet(**options).serve(conn))


class Fleets:
    """The client processes, started with a share of the sockets each."""

    def __init__(self, context, *, processes: int, sockets: int, **options: Any) -> None:
        shares = [sockets // processes + (index < sockets % processes) for index in range(processes)]
        self.conns, self.processes = [], []
        for share in shares:
            ours, theirs = context.Pipe()
            process = context.Process(target=fleet_main, args=(theirs, {"count": share, **options}), daemon=True)
            process.start()
            self.conns.append(ours)
            self.processes.append(process)

    def call(self, command: str, *, first_only: bool = False) -> list[Any]:
        """Send a command to every process (so that they start together), then collect the results."""
        conns = self.conns[:1] if first_only else self.conns
        for conn in conns:
            conn.send(command)
        return [conn.recv() for conn in conns]

    def stop(self) -> None:
        """Let each process end (its sockets close with it); kill one that does not."""
        for conn, process in zip(self.conns, self.processes, strict=True):
            with contextlib.suppress(OSError):
                conn.send(None)
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
