"""WebSocket URL routes."""

from django.urls import re_path

from .consumers import SessionConsumer, SessionWatchConsumer

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

websocket_urlpatterns = [
    re_path(rf"^ws/admin/sessions/(?P<session_id>{UUID_PATTERN})/watch/?$", SessionWatchConsumer.as_asgi()),
    re_path(rf"^ws/session/(?P<session_id>{UUID_PATTERN})/?$", SessionConsumer.as_asgi()),
]
