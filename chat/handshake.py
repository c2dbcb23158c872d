"""Check a WebSocket handshake: the Origin before any consumer runs, the user once the consumer accepted.

The middleware wraps the socket routes in `llmbacker.asgi`. Settings are read on every
handshake, not at import, so tests can change them.
"""

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from channels.auth import AuthMiddleware
from channels.auth import get_user as channels_get_user
from channels.security.websocket import WebsocketDenier
from channels.sessions import CookieMiddleware, InstanceSessionWrapper, SessionMiddleware
from django.conf import settings
from django.http.request import split_domain_port, validate_host

# The HTTP scheme whose pages may open a socket of each WebSocket scheme.
PAGE_SCHEME = {"ws": "http", "wss": "https"}
DEFAULT_PORT = {"http": 80, "https": 443}


def header_get(scope: dict[str, Any], name: bytes) -> str | None:
    """Return the value of a handshake header (the last one sent), or None."""
    value = None
    for key, raw in scope.get("headers", []):
        if key == name:
            value = raw.decode("latin1")
    return value


def handshake_secure(scope: dict[str, Any]) -> bool:
    """Return whether the client connected over TLS, by Django's rule for `request.is_secure()`.

    Behind a TLS-terminating proxy the socket reaches daphne as plain `ws`, so
    SECURE_PROXY_SSL_HEADER (when set and sent) decides, as it does for HTTP.
    daphne never puts a scheme in a WebSocket scope, so without that header
    the scheme is ASGI's default, `ws`.
    """
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        header = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1")
        value = header_get(scope, header)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme", "ws") == "wss"


def allowed_hosts() -> list[str]:
    """Return ALLOWED_HOSTS, with Django's own fallback when DEBUG is on and it is empty."""
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return [".localhost", "127.0.0.1", "[::1]"]
    return settings.ALLOWED_HOSTS


def origin_allowed(*, origin: str | None, host: str | None, secure: bool) -> bool:
    """Return whether a page of `origin` may open this socket (`host`: the handshake's Host header).

    Allowed: an Origin listed exactly in CSRF_TRUSTED_ORIGINS, or the
    socket's own origin (same scheme family, same host and port as the Host
    header, and that host in ALLOWED_HOSTS). A missing Origin passes only when
    ALLOWED_HOSTS holds "*", as with Channels' AllowedHostsOriginValidator:
    browsers always send one, so only scripts omit it, and they must send an
    allowed Origin like any page.
    """
    hosts = allowed_hosts()
    if origin is None:
        return "*" in hosts
    origin = origin.strip().lower()
    if origin in {trusted.lower().rstrip("/") for trusted in settings.CSRF_TRUSTED_ORIGINS}:
        return True
    parts = urlsplit(origin)
    try:
        origin_port = parts.port or DEFAULT_PORT.get(parts.scheme)
    except ValueError:
        return False
    if parts.scheme != PAGE_SCHEME["wss" if secure else "ws"] or not parts.hostname:
        return False
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        return False
    origin_host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if not validate_host(origin_host, hosts):
        return False
    if host is None:
        # Only an in-process ASGI caller (Channels' test communicator) omits
        # Host; daphne refuses such a handshake. The port is then unknown.
        return True
    domain, port = split_domain_port(host.lower())
    if not domain:
        return False
    return (domain, int(port) if port else DEFAULT_PORT[parts.scheme]) == (origin_host, origin_port)


class StrictOriginValidator:
    """Refuse (HTTP 403) a socket opened from another origin: scheme, host and port all count."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the handshake on when its Origin is allowed; close it before accepting otherwise."""
        if scope["type"] != "websocket":
            raise ValueError("StrictOriginValidator only guards WebSocket connections")
        allowed = origin_allowed(
            origin=header_get(scope, b"origin"), host=header_get(scope, b"host"), secure=handshake_secure(scope)
        )
        if allowed:
            return await self.application(scope, receive, send)
        return await WebsocketDenier.as_asgi()(scope, receive, send)


class DeferredAuthMiddleware(AuthMiddleware):
    """Channels' AuthMiddleware, except that the user is looked up by the consumer, after accepting.

    Looking the user up reads the session and the user from the database, on
    the thread every socket's database work shares. Done here, before the
    consumer runs, a handshake waited behind the work of the sockets already
    accepted, and under a burst of connections missed daphne's 5 s handshake
    deadline. `scope["user"]` stays unresolved until `caller_identify` runs.
    """

    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        """Leave the user to `caller_identify`."""


def user_resolve(scope: dict[str, Any]) -> Any:
    """Look up the socket's user from its session (sync, on the database thread) and fill in `scope["user"]`."""
    user = channels_get_user.func(scope)
    scope["user"]._wrapped = user
    return user


@dataclass(frozen=True)
class Caller:
    """Who opened a socket: a user, or an anonymous visitor known by their Django session key."""

    user_id: int | None
    anon_key: str

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None


def caller_identify(scope: dict[str, Any], *, allow_anonymous: bool) -> Caller | None:
    """Resolve the socket's user (sync, on the database thread); None for an anonymous caller not allowed.

    An anonymous caller without a session cookie gets a new Django session,
    so it is a new visitor on every connection and cannot resume (daphne
    sends no headers with the handshake's answer, so no cookie can be set).
    A database failure raises django.db.Error.
    """
    user = user_resolve(scope)
    if user.is_authenticated:
        return Caller(user_id=user.pk, anon_key="")
    if not allow_anonymous:
        return None
    session = scope["session"]
    if not session.session_key:
        session.save()
    return Caller(user_id=None, anon_key=session.session_key)


class SocketSessionMiddleware(SessionMiddleware):
    """Channels' SessionMiddleware, without its wrapper around `send` on a WebSocket.

    The wrapper saves a changed session when an HTTP response starts, and
    looks at the session on every message sent to find out; a WebSocket
    sends no such message (the chat saves a new visitor's session itself,
    see `caller_identify`), so on a socket it only cost CPU on every token
    frame (about 5% of daphne's CPU while replies stream, in the load
    bench's profile).
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        """Put the session in the scope and call the inner application with the socket's own `send`."""
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


def auth_middleware_stack(inner: Any) -> CookieMiddleware:
    """Wrap `inner` in cookies, the Django session and a user that the consumer resolves after accepting."""
    return CookieMiddleware(SocketSessionMiddleware(DeferredAuthMiddleware(inner)))
