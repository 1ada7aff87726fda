"""The reference game client: one turn with an NPC over the game websocket, printed as it streams.

    REVENANT_GAME_KEY=rvk_... python -m bridge.client --npc count-valerian "Who are you?"

The key comes from the environment (never the command line, where `ps` would show it); the
URL from --url or REVENANT_WS_URL. A play-only key (what a player's build holds) also needs its
player's token in REVENANT_PLAYER_TOKEN: a game server signs it with `console.player_tokens.
player_token_for(secret=<its players-scope key>, player_id=..., ttl_s=3600)` (docs/protocol.md,
Player tokens), or `manage.py mint_player_token` prints one. Prints the reply as it streams,
then emotion, action, tier, adapter and timings. Exit status: 0 on turn.end, 1 on an error
frame, 2 on bad usage. It is also the smallest complete example of the protocol
(docs/protocol.md): start a session, say something, read deltas, acknowledge what arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

DEFAULT_URL = "ws://127.0.0.1:8000/ws/game/"


async def npc_turn(
    *, url: str, key: str, npc: str, text: str, player_id: str, player_token: str | None = None,
    out: Any = sys.stdout,
) -> dict[str, Any]:  # fmt: skip
    """Run one turn; write deltas to `out` as they arrive; return the turn.end (or error) frame."""
    start: dict[str, Any] = {"type": "session.start", "player_id": player_id}
    if player_token:
        start["player_token"] = player_token  # a play-only key proves which player it plays
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=2**20) as socket:
        await socket.send(json.dumps(start))
        request_id = uuid.uuid4().hex[:16]
        sent = False
        async for raw in socket:
            frame = json.loads(raw)
            kind = frame["type"]
            if kind == "session.ready" and not sent:
                await socket.send(
                    json.dumps({"type": "npc.say", "request_id": request_id, "npc_id": npc, "text": text})
                )
                sent = True
            elif kind == "turn.start":
                out.write(f"[{frame['npc_id']} · {frame['tier']} · {frame['adapter']}]\n")
            elif kind == "turn.delta":
                out.write(frame["text"])
                out.flush()
            elif kind in ("turn.end", "turn.error", "error"):
                await socket.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
                return dict(frame)
    raise ConnectionError("the server closed the socket before the turn ended")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", help="what the player says")
    parser.add_argument("--npc", required=True, help="the NPC's slug, e.g. count-valerian")
    parser.add_argument("--url", default=os.environ.get("REVENANT_WS_URL", DEFAULT_URL))
    parser.add_argument("--player", default="reference-client", help="player id sent in session.start")
    args = parser.parse_args()
    key = os.environ.get("REVENANT_GAME_KEY", "")
    if not key:
        parser.error("set REVENANT_GAME_KEY to a game key (python manage.py create_game_key NAME prints one)")
    try:
        frame = asyncio.run(
            npc_turn(
                url=args.url,
                key=key,
                npc=args.npc,
                text=args.text,
                player_id=args.player,
                player_token=os.environ.get("REVENANT_PLAYER_TOKEN") or None,
            )  # fmt: skip
        )
    except InvalidStatus as exc:
        code = exc.response.status_code
        hint = "the game key is missing, wrong or revoked" if code == 403 else "see the server's log"
        print(f"\nconnection refused ({code}): {hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"\ncannot reach {args.url}: {exc} (is `make run` up?)", file=sys.stderr)
        return 1
    if frame["type"] != "turn.end":
        print(f"\n{frame['type']} {frame['code']}: {frame['message']}", file=sys.stderr)
        return 1
    timing = frame["timing"]
    print(
        f"\n\nemotion: {frame['emotion']}  action: {frame['action']}\n"
        f"first token: {timing['ttft_ms']} ms  total: {timing['total_ms']} ms  "
        f"tokens: {frame['usage']['completion_tokens']}"
        + (f"\nfallbacks: {', '.join(frame['fallbacks'])}" if frame.get("fallbacks") else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
