"""WebSocket URL routes."""

from channels.security.websocket import WebsocketDenier
from django.urls import re_path

from .consumers import SessionConsumer, SessionWatchConsumer

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

websocket_urlpatterns = [
    re_path(rf"^ws/admin/sessions/(?P<session_id>{UUID_PATTERN})/watch/?$", SessionWatchConsumer.as_asgi()),
    re_path(rf"^ws/session/(?P<session_id>{UUID_PATTERN})/?$", SessionConsumer.as_asgi()),
    # Any other path (a session id that is not a UUID, a typo, a scanner):
    # close before accepting, which daphne answers with HTTP 403. Without this
    # route URLRouter raises "No route found" and the handshake is a 500.
    re_path(r"", WebsocketDenier.as_asgi()),
]
