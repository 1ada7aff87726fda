"""Websocket URL table mounted by console/asgi.py."""

from typing import Any

from django.urls import path

from bridge.consumers import GameConsumer

# Any: channels' stubs type routes with a private pattern class that `path()` does not return.
websocket_urlpatterns: list[Any] = [
    path("ws/game/", GameConsumer.as_asgi()),  # type: ignore[arg-type]
]
