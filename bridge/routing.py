"""Websocket URL table mounted by console/asgi.py.

Empty until the bridge issue adds `/ws/game/`: a websocket to any path is refused today.
"""

from typing import Any

# Any: channels' stubs type routes with a private pattern class that `path()` does not return.
websocket_urlpatterns: list[Any] = []
