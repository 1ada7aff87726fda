"""ASGI entry point: HTTP through Django, websockets through the bridge's router.

`get_asgi_application()` runs first so that the app registry is ready before the bridge
imports models.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings.dev")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - needs the app registry
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402 - needs the app registry

from bridge.routing import websocket_urlpatterns  # noqa: E402 - needs the app registry

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The session cookie identifies the playtest page's user; game clients use keys (bridge.auth).
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
