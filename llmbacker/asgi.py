"""ASGI entry point: HTTP through Django, WebSockets through Channels (`daphne llmbacker.asgi:application`)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmbacker.settings")
# Set up Django before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.handshake import StrictOriginValidator, auth_middleware_stack  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

from .autobahn_debug import lazy_pformat_install  # noqa: E402
from .collector import collector_tune  # noqa: E402

lazy_pformat_install()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Both sockets (chat and the admin's live watch): Origin first, then the user.
        "websocket": StrictOriginValidator(auth_middleware_stack(URLRouter(websocket_urlpatterns))),
    }
)

# Last: what was built until now lives as long as the process.
collector_tune()
