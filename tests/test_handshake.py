"""The socket handshake before any consumer: Origin rule, unknown paths, a database down, production settings."""

import base64
import os
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator

from chat.handshake import handshake_secure, origin_allowed

from .conftest import ARTIFACTS, REPO, daphne_start, free_port, process_stop, subprocess_env

# --- The Origin rule, as a function ------------------------------------------


@pytest.fixture
def hosts(settings):
    settings.ALLOWED_HOSTS = ["chat.example.com", "localhost", "[::1]"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.net"]
    return settings


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        ("http://localhost:8000", "localhost:8000", False),
        ("https://chat.example.com", "chat.example.com", True),
        ("https://chat.example.com", "chat.example.com:443", True),
        ("http://chat.example.com:80", "chat.example.com", False),
        ("HTTP://Chat.Example.COM", "chat.example.com", False),
        ("http://[::1]:8000", "[::1]:8000", False),
    ],
)
def test_the_sockets_own_origin_is_allowed(hosts, origin, host, secure):
    assert origin_allowed(origin=origin, host=host, secure=secure)


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        ("http://localhost:9000", "localhost:8000", False),
        ("http://localhost", "localhost:8000", False),
        ("https://localhost:8000", "localhost:8000", False),
        ("http://chat.example.com", "chat.example.com", True),
        ("https://chat.example.com:8443", "chat.example.com", True),
        ("http://other.localhost:8000", "localhost:8000", False),
        ("http://evil.example", "evil.example", False),
        ("null", "localhost:8000", False),
        ("http://localhost:8000/page", "localhost:8000", False),
        ("http://user@localhost:8000", "localhost:8000", False),
        ("http://localhost:notaport", "localhost:8000", False),
        ("ws://localhost:8000", "localhost:8000", False),
    ],
)
def test_another_scheme_host_or_port_is_refused(hosts, origin, host, secure):
    assert not origin_allowed(origin=origin, host=host, secure=secure)


def test_an_origin_listed_exactly_in_csrf_trusted_origins_is_allowed_from_any_host(hosts):
    assert origin_allowed(origin="https://app.example.net", host="chat.example.com", secure=True)
    assert origin_allowed(origin="https://app.example.net", host="10.0.0.5:8000", secure=False)
    assert not origin_allowed(origin="https://app.example.net:8443", host="chat.example.com", secure=True)
    assert not origin_allowed(origin="http://app.example.net", host="chat.example.com", secure=True)


def test_a_missing_origin_is_refused_unless_every_host_is_allowed(hosts):
    assert not origin_allowed(origin=None, host="localhost:8000", secure=False)
    hosts.ALLOWED_HOSTS = ["*"]
    assert origin_allowed(origin=None, host="localhost:8000", secure=False)


def test_without_a_host_header_the_origin_host_and_scheme_still_count(hosts):
    assert origin_allowed(origin="http://localhost", host=None, secure=False)
    assert not origin_allowed(origin="https://localhost", host=None, secure=False)
    assert not origin_allowed(origin="http://evil.example", host=None, secure=False)


def test_the_proxy_ssl_header_makes_a_handshake_secure_as_it_does_a_request(settings):
    forwarded = {"type": "websocket", "headers": [(b"x-forwarded-proto", b"https")]}
    assert not handshake_secure(forwarded)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert handshake_secure(forwarded)
    assert not handshake_secure({"type": "websocket", "headers": [(b"x-forwarded-proto", b"http")]})
    assert not handshake_secure({"type": "websocket", "headers": []})
    assert handshake_secure({"type": "websocket", "scheme": "wss", "headers": []})


# --- The Origin rule and unknown paths, through the ASGI app -------------------


def communicator(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    from llmbacker.asgi import application

    return WebsocketCommunicator(application, path, headers=headers)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_page_of_the_same_host_and_port_opens_the_chat_socket():
    comm = communicator(
        f"/ws/session/{uuid.uuid4()}/", [(b"host", b"localhost:8000"), (b"origin", b"http://localhost:8000")]
    )
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from(timeout=5))["type"] == "session"
    await comm.disconnect(timeout=15)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", [f"/ws/session/{uuid.uuid4()}/", f"/ws/admin/sessions/{uuid.uuid4()}/watch/"])
async def test_a_page_on_another_port_cannot_open_either_socket(path):
    comm = communicator(path, [(b"host", b"localhost:8000"), (b"origin", b"http://localhost:3000")])
    assert await comm.connect() == (False, 1000)
    await comm.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/ws/session/not-a-uuid/", "/ws/nowhere/", "/"])
async def test_an_unknown_socket_path_is_refused_before_accepting(path):
    comm = communicator(path, [(b"origin", b"http://localhost")])
    assert await comm.connect() == (False, 1000)
    await comm.disconnect()


# --- Through daphne: HTTP status of refusals -----------------------------------


@dataclass
class RawSocket:
    """A WebSocket client written out by hand, to see the handshake's HTTP status and raw frames."""

    sock: socket.socket
    status: int = 0
    head: bytes = b""
    buffer: bytes = field(default=b"", repr=False)

    @classmethod
    def open(cls, port: int, path: str, headers: dict[str, str]) -> "RawSocket":
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin1"))
        raw = cls(sock=sock)
        head = raw.read_until(b"\r\n\r\n")
        raw.status = int(head.split(b" ", 2)[1])
        raw.head = head
        return raw

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self.buffer!r}")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the middle of a frame")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def frame(self) -> tuple[int, bytes]:
        """Return the next frame from the server (unmasked) as (opcode, payload)."""
        first, second = self.read(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self.read(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self.read(8))
        return first & 0x0F, self.read(size)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def daphne_plain(django_db_setup, tmp_path_factory) -> Iterator[tuple[int, Path]]:
    """Serve the app with daphne on the test database, logging to a file of its own; yield (port, log)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("daphne") / "daphne.log"
    with open(log_path, "ab") as log:
        process = daphne_start(port=port, log=log)
        try:
            yield port, log_path
        finally:
            process_stop(process)


@pytest.mark.parametrize("path", ["/ws/session/not-a-uuid/", "/ws/session/", "/ws/elsewhere/"])
def test_daphne_answers_an_unknown_socket_path_with_403_and_no_traceback(daphne_plain, path):
    port, log_path = daphne_plain
    client = RawSocket.open(port, path, {"Origin": f"http://127.0.0.1:{port}"})
    client.close()
    assert client.status == 403
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert "No route found" not in log


def test_daphne_answers_a_page_on_another_port_with_403(daphne_plain):
    port, _ = daphne_plain
    client = RawSocket.open(port, f"/ws/session/{uuid.uuid4()}/", {"Origin": f"http://127.0.0.1:{port + 1}"})
    client.close()
    assert client.status == 403


# --- A database that goes down: a private PostgreSQL cluster -------------------


LOGIN_SCRIPT = """
from django.contrib.auth import get_user_model
from django.test import Client
user = get_user_model().objects.create_user("ada", password="pw")
client = Client()
client.force_login(user)
print(client.cookies["sessionid"].value)
"""


def test_a_session_cookie_with_the_database_down_gets_an_internal_error_not_http_500(private_postgres):
    env = subprocess_env(groq_url=None, DATABASE_URL=private_postgres.url("llmbacker"))
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, env=env, check=True, timeout=120)
    login = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", LOGIN_SCRIPT],
        cwd=REPO,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    headers = {"Cookie": f"sessionid={login.stdout.split()[-1]}"}
    port = free_port()
    headers["Origin"] = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / "daphne-database-down.log"
    log_path.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        daphne = daphne_start(port=port, log=log, env=env)
        try:
            # Up: the cookie's user is found and the chat opens.
            up = RawSocket.open(port, f"/ws/session/{uuid.uuid4()}/", headers)
            assert up.status == 101, up.head + up.buffer
            opcode, payload = up.frame()
            assert (opcode, b'"type": "session"' in payload) == (1, True), payload
            up.close()

            private_postgres.stop()

            # Down: the handshake still succeeds, then the chat says why it cannot go on.
            down = RawSocket.open(port, f"/ws/session/{uuid.uuid4()}/", headers)
            assert down.status == 101
            frames = [down.frame() for _ in range(2)]
            down.close()
        finally:
            process_stop(daphne)
    (text_opcode, text), (close_opcode, close) = frames
    assert text_opcode == 1 and b'"code": "internal"' in text, frames
    assert close_opcode == 8 and struct.unpack("!H", close[:2])[0] == 4500, frames
    log_text = log_path.read_text(errors="replace")
    assert "could not open session" in log_text and "Traceback" not in log_text


# --- Production settings ---------------------------------------------------------


def test_check_deploy_is_clean_with_debug_off_behind_tls(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DEBUG="false",
        SECRET_KEY=base64.b64encode(os.urandom(48)).decode(),
        ALLOWED_HOSTS="chat.example.com",
        DATABASE_URL=f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_settings_refuse_to_start_with_debug_off_and_no_secret_key():
    env = {key: value for key, value in os.environ.items() if key not in ("DJANGO_SETTINGS_MODULE", "SECRET_KEY")}
    env.pop("DEBUG", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is false" in result.stderr


# --- A Celery worker or beat without a broker -----------------------------------


@pytest.mark.parametrize("program", [["worker", "--pool=solo"], ["beat", "--schedule", "{tmp}/schedule"]])
def test_celery_worker_and_beat_refuse_to_start_without_a_broker(program, tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "CELERY_BROKER_URL")}
    env.update(DEBUG="true", PYTHONPATH=str(REPO), DJANGO_SETTINGS_MODULE="llmbacker.settings")
    celery = Path(sys.executable).with_name("celery")
    result = subprocess.run(
        [str(celery), "-A", "llmbacker", *(arg.format(tmp=tmp_path) for arg in program)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "No Celery broker: set REDIS_URL (or CELERY_BROKER_URL)" in result.stdout + result.stderr
