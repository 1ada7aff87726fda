"""How the bridge's ASGI server (Daphne) is started: the same argv for `make run`, tests and benchmarks."""

from __future__ import annotations

import sys

from django.conf import settings

# Daphne pings an idle socket after this many seconds and closes it when no pong comes back
# within the timeout: dead clients (a game killed, a cable pulled) free their sockets.
PING_INTERVAL_S = 10
PING_TIMEOUT_S = 20


def daphne_argv(*, host: str, port: int) -> list[str]:
    """Daphne serving console.asgi with the bridge's frame-size and heartbeat limits."""
    frame_bytes = str(settings.BRIDGE_MAX_FRAME_BYTES)
    return [
        sys.executable, "-m", "daphne",
        "-b", host, "-p", str(port),
        # Frames over the limit are refused by Daphne (close 1009) before the app sees them.
        "--websocket-max-message-size", frame_bytes,
        "--websocket-max-frame-size", frame_bytes,
        "--ping-interval", str(PING_INTERVAL_S),
        "--ping-timeout", str(PING_TIMEOUT_S),
        "console.asgi:application",
    ]  # fmt: skip
