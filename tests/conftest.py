"""Shared fixtures: the fake Groq server, WebSocket clients, services, and the daphne and Celery subprocesses."""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote
from urllib.request import urlopen

import pytest
import pytest_asyncio
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from .fake_groq import FakeGroq

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
ORIGIN = b"http://localhost"


def on_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def on_redis() -> bool:
    return bool(settings.REDIS_URL)


def service_missing(reason: str) -> None:
    """Skip the test for want of a service, or fail it under REQUIRE_SERVICES=1."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}, and REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


# How long the database must go without work from other connections before a test's flush.
QUIET_SECONDS = 0.3


@pytest.fixture(autouse=True)
def database_quiet_before_flush(request) -> Iterator[None]:
    """Before pytest-django empties the database, wait for other connections to finish their work.

    A transactional test ends with a TRUNCATE of every table. Work still
    running in another connection at that moment (a daphne subprocess ending
    a session whose browser just closed, a database call left running in a
    thread by a cancelled coroutine) can deadlock with it, and PostgreSQL
    then aborts the TRUNCATE. Being autouse and defined here, this fixture is
    set up after pytest-django's database fixture, so it is torn down before
    the flush. The database must stay quiet for QUIET_SECONDS in a row: a
    socket the test has just closed is let go by daphne a moment later, and
    a single look found the database quiet just before that (the TRUNCATE
    then deadlocked with the socket's leave). Whatever is still busy after
    the wait is reported.
    """
    yield
    marker = request.node.get_closest_marker("django_db")
    if not (on_postgres() and marker and marker.kwargs.get("transaction")):
        return
    from django.db import connection

    sql = (
        "SELECT pid, state, left(query, 200) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        " AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')"
    )
    deadline = time.monotonic() + 20
    quiet_since = None
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            busy = cursor.fetchall()
        now = time.monotonic()
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= QUIET_SECONDS:
            return
        if now > deadline:
            if busy:
                warnings.warn(f"other connections still busy before the flush: {busy}", stacklevel=1)
            return
        time.sleep(0.05)


@pytest_asyncio.fixture(autouse=True)
async def chat_hub_closed() -> AsyncIterator[None]:
    """Stop the test loop's chat hub (see `chat.streams.hub_close`) before the loop closes."""
    yield
    from chat.streams import hub_close

    stubborn = await hub_close()
    # The request loop has nothing to clean up: still running after its cancel, it lost that cancel.
    assert not [task for task in stubborn if task.get_name() == "turn-requests"], stubborn
    if stubborn:
        warnings.warn(f"chat hub tasks outlived their cancel: {stubborn}", stacklevel=1)


@pytest.fixture(scope="session", autouse=True)
def database_sync_thread_closed(django_db_setup) -> Iterator[None]:
    """Give back the connection asgiref's shared thread keeps before the test database is dropped.

    The chat's database calls and the tests' plain `sync_to_async` reads run
    on asgiref's shared thread, which keeps its connection between calls; a
    connection still checked out of the pool would keep PostgreSQL from
    dropping the test database.
    """
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)


@pytest.fixture(scope="session", autouse=True)
def redis_test_db() -> Iterator[None]:
    """Empty the tests' own Redis database before and after the run."""
    if not on_redis():
        yield
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()
    client.close()


@pytest.fixture(autouse=True)
def local_tasks_inline(request) -> Iterator[None]:
    """Run in-process tasks at once in the caller's thread, so a test sees their effect when the call returns.

    A test marked `local_tasks_thread` keeps the real task thread. The patch
    has a MonkeyPatch of its own, so a test's `monkeypatch.undo()` leaves it.
    """
    if request.node.get_closest_marker("local_tasks_thread"):
        yield
        return
    from audit.tasks import local_tasks

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_tasks, "submit", lambda task, args: task.apply(args=args))
        yield


@pytest.fixture
def broker_down():
    """Send tasks to a broker nobody listens on, as when Redis is down."""
    from llmbacker.celery import app as celery_app

    conf = celery_app.conf
    saved = conf.broker_url, conf.task_always_eager
    conf.broker_url, conf.task_always_eager = "redis://127.0.0.1:9/0", False
    celery_app._pool, celery_app.amqp._producer_pool = None, None
    yield
    conf.broker_url, conf.task_always_eager = saved
    celery_app._pool, celery_app.amqp._producer_pool = None, None


@pytest.fixture(scope="session")
def fake_groq_server() -> Iterator[FakeGroq]:
    server = FakeGroq().start()
    yield server
    server.stop()


@pytest.fixture
def fake_groq(settings, fake_groq_server: FakeGroq) -> FakeGroq:
    """Point the app's groq SDK at the fake Groq server (instead of the offline model)."""
    fake_groq_server.reset()
    settings.GROQ_API_KEY = "test-key"
    settings.GROQ_BASE_URL = fake_groq_server.url
    return fake_groq_server


@dataclass
class Visitor:
    """Someone with a Django session cookie (anonymous, or logged in as `user`)."""

    session_key: str
    user: Any = None

    def headers(self, origin: bytes = ORIGIN) -> list[tuple[bytes, bytes]]:
        cookie = f"{settings.SESSION_COOKIE_NAME}={self.session_key}".encode()
        return [(b"origin", origin), (b"cookie", cookie)]


@pytest.fixture
def make_visitor(transactional_db):
    """Return a factory of visitors: anonymous by default, or logged in as the given user."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import Client

    def make(user=None) -> Visitor:
        if user is not None:
            client = Client()
            client.force_login(user)
            return Visitor(session_key=client.cookies[settings.SESSION_COOKIE_NAME].value, user=user)
        store = SessionStore()
        store.create()
        return Visitor(session_key=store.session_key or "")

    return make


@pytest.fixture
def avisitor(make_visitor):
    """The visitor factory for async tests."""
    return sync_to_async(make_visitor)


class ChatClient:
    """A WebSocket client of the real ASGI app (origin check, auth, routing, consumer)."""

    def __init__(
        self,
        visitor: Visitor | None,
        session_id: uuid.UUID | None = None,
        origin: bytes = ORIGIN,
        after: int | None = None,
    ):
        from llmbacker.asgi import application

        self.session_id = session_id or uuid.uuid4()
        self.visitor = visitor
        headers = visitor.headers(origin) if visitor else [(b"origin", origin)]
        path = f"/ws/session/{self.session_id}/" + (f"?after={after}" if after is not None else "")
        self.comm = WebsocketCommunicator(application, path, headers=headers)

    async def connect(self) -> dict[str, Any]:
        """Connect and return the `session` frame."""
        connected, _ = await self.comm.connect()
        assert connected, "the handshake was refused"
        frame = await self.receive()
        assert frame["type"] == "session", frame
        return frame

    async def send(self, frame: dict[str, Any]) -> None:
        await self.comm.send_json_to(frame)

    async def receive(self, timeout: float = 5) -> dict[str, Any]:
        return await self.comm.receive_json_from(timeout=timeout)

    async def until(self, frame_type: str, timeout: float = 10) -> list[dict[str, Any]]:
        """Return every frame up to and including the first of `frame_type`."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.receive(timeout=max(0.1, deadline - time.monotonic()))
            frames.append(frame)
            if frame["type"] == frame_type:
                return frames

    async def turn(self, content: str, timeout: float = 10) -> list[dict[str, Any]]:
        """Send a message and return its frames up to `done`."""
        await self.send({"type": "message", "content": content})
        return await self.until("done", timeout=timeout)

    async def close(self) -> None:
        """Disconnect and wait for the consumer's disconnect handling to finish.

        Leaving ends the session and writes its summary in process; the
        communicator's default (1 s) would cancel that mid-way on a slow
        machine, and its database writes would then race the test's teardown.
        """
        await self.comm.disconnect(timeout=15)


@sync_to_async
def events_of(session_id) -> list:
    """Return the session's recorded events in order."""
    from audit.models import Event

    return list(Event.objects.filter(session_id=session_id).order_by("seq"))


def text_of(frames: list[dict[str, Any]]) -> str:
    """Join the token frames' text."""
    return "".join(frame["content"] for frame in frames if frame["type"] == "token")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for_subprocess() -> str:
    """Return a DATABASE_URL for the test database, for subprocesses."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"] or "")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"])
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def subprocess_env(*, groq_url: str | None, **extra: str) -> dict[str, str]:
    """Return the environment of a daphne or Celery subprocess on the test database and Redis."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GROQ_", "CELERY_"))}
    env.pop("REDIS_URL", None)
    env.update(
        DJANGO_SETTINGS_MODULE="llmbacker.settings",
        DATABASE_URL=database_url_for_subprocess(),
        DEBUG="true",
        PYTHONPATH=str(REPO),
        GROQ_MAX_RETRIES="0",
        # Tasks the subprocess sends go where the tests' worker listens.
        CELERY_TASK_DEFAULT_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
    )
    if on_redis():
        env["REDIS_URL"] = settings.REDIS_URL
    if groq_url:
        env.update(GROQ_API_KEY="test-key", GROQ_BASE_URL=groq_url)
    env.update(extra)
    return env


def visitor_cookie(base_url: str) -> str:
    """Load the chat page as a browser does; return the `Cookie` header value of the visitor's Django session."""
    with urlopen(f"{base_url}/", timeout=10) as response:  # noqa: S310 (a local URL)
        for header in response.headers.get_all("Set-Cookie") or ():
            cookie = SimpleCookie(header)
            if settings.SESSION_COOKIE_NAME in cookie:
                return f"{settings.SESSION_COOKIE_NAME}={cookie[settings.SESSION_COOKIE_NAME].value}"
    raise AssertionError("the chat page set no session cookie")


def port_wait(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    """Wait until something listens on the port, failing early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def process_stop(process: subprocess.Popen, *, timeout: float = 10) -> None:
    """Stop a subprocess; kill it when it does not stop in time (daphne waits for open sockets)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def daphne_start(
    *, port: int, log, groq_url: str | None = None, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen:
    """Start daphne (on the test database unless `env` says otherwise) and wait until it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "llmbacker.asgi:application"],
        cwd=REPO,
        env=env if env is not None else subprocess_env(groq_url=groq_url),
        stdout=log,
        stderr=subprocess.STDOUT,
        **popen,
    )
    port_wait(port, process)
    return process


@pytest.fixture(scope="module")
def daphne_server(django_db_setup, fake_groq_server: FakeGroq) -> Iterator[str]:
    """Serve the app with daphne in a subprocess on the test database; yield its base URL."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    log = open(ARTIFACTS / "daphne.log", "ab")  # noqa: SIM115 (closed below)
    process = daphne_start(port=port, groq_url=fake_groq_server.url, log=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process_stop(process)
        log.close()


@pytest.fixture
def worker_start(fake_groq):
    """Start `celery -A llmbacker worker` on the tests' queue; tasks go to it, not run here.

    `start(pool, **env)`: the pool of choice, and extra environment for the worker.
    """
    if not on_redis():
        service_missing("REDIS_URL is not set: a real worker needs Redis as its broker")
    from llmbacker.celery import app as celery_app

    ARTIFACTS.mkdir(exist_ok=True)
    started: list[tuple[subprocess.Popen, object]] = []

    def start(pool: str = "solo", **env: str) -> subprocess.Popen:
        log = open(ARTIFACTS / "celery-worker.log", "wb")  # noqa: SIM115 (closed below)
        command = [
            sys.executable, "-m", "celery", "-A", "llmbacker", "worker",
            f"--pool={pool}", "--concurrency=1", f"--queues={settings.CELERY_TASK_DEFAULT_QUEUE}", "--loglevel=INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        worker = subprocess.Popen(
            command, cwd=REPO, env=subprocess_env(groq_url=fake_groq.url, **env), stdout=log, stderr=subprocess.STDOUT
        )
        started.append((worker, log))
        return worker

    celery_app.conf.task_always_eager = False
    try:
        yield start
    finally:
        celery_app.conf.task_always_eager = True
        for worker, log in started:
            process_stop(worker, timeout=15)
            log.close()


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser_page():
    """A page in Debian's headless Chromium, driven by Playwright (function-scoped, see DESIGN pitfalls)."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(executable):
        service_missing("Debian's chromium is not installed (apt-get install -y chromium)")
    from django.db import connections
    from playwright.sync_api import sync_playwright

    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            page = browser.new_page()
            try:
                yield page
            finally:
                # Connections the test opened here belong to Playwright's context: close them before leaving it.
                connections.close_all()
                browser.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of the tests' own (temp dir, own port, trust auth): never the shared one."""

    bin: Path
    root: Path
    port: int

    def run(self, *args: str) -> subprocess.CompletedProcess:
        # initdb and postgres refuse to run as root.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=60)

    def url(self, database: str = "llmbacker") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.root / "data"), str(self.root / "server.log")
        self.run(str(self.bin / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """Start a private PostgreSQL cluster with an empty `llmbacker` database; remove it afterwards."""
    import glob
    import tempfile

    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not initdbs:
        service_missing("no PostgreSQL server binaries under /usr/lib/postgresql")
    root = Path(tempfile.mkdtemp(prefix="llmbacker-private-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PrivatePostgres(bin=Path(initdbs[-1]).parent, root=root, port=free_port())
    try:
        cluster.run(str(cluster.bin / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "-N")
        cluster.start()
        cluster.run(str(cluster.bin / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "llmbacker")
        yield cluster
    finally:
        if cluster.running():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PrivateRedis:
    """A Redis server of the tests' own, keeping nothing on disk: never the shared one.

    It listens on its own TCP port, or with `unix_socket` on that socket only.
    """

    port: int = 0
    unix_socket: Path | None = None
    process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}?db={db}"
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        executable = shutil.which("redis-server") or "/usr/bin/redis-server"
        if self.unix_socket is not None:
            listen = ["--port", "0", "--unixsocket", str(self.unix_socket)]
        else:
            listen = ["--port", str(self.port), "--bind", "127.0.0.1"]
        self.process = subprocess.Popen(
            [executable, *listen, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self.unix_socket is None:
            port_wait(self.port, self.process, timeout=10)
            return
        deadline = time.monotonic() + 10
        while not self.unix_socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not open {self.unix_socket}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            process_stop(self.process)
            self.process = None


def redis_server_required() -> None:
    if not shutil.which("redis-server") and not os.path.exists("/usr/bin/redis-server"):
        service_missing("redis-server is not installed")


@pytest.fixture
def unix_redis(tmp_path) -> Iterator[str]:
    """Start a private Redis server listening on a Unix socket only; yield its `unix://` URL."""
    redis_server_required()
    server = PrivateRedis(unix_socket=tmp_path / "redis.sock")
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    """Start a private Redis server; stop it afterwards."""
    redis_server_required()
    server = PrivateRedis(port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
