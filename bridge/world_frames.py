"""What the game tells the server of its world, outside turns: a player's quest stage with an NPC
(`npc.quest`) and where players and NPCs are (`world.positions`). Each applies the frame to its
store and answers the frames to send back, or raises the ProtocolError the client is owed
(docs/protocol.md)."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from bridge.protocol import NpcQuest, ProtocolError, WorldPositions
from bridge.sessions import GameSession
from console.models import NPC
from inference.activation import BadPositions, UnknownRegion, gold_promotions, tier_frames, tiers_apply
from inference.context import turn_context_cached
from inference.turn.background import in_background
from inference.turn.inputs import turn_inputs_prefetch
from memory.pairs import QuestCardFull, QuestStageInvalid, memory_quest_update

logger = logging.getLogger(__name__)


async def quest_apply(session: GameSession, message: NpcQuest) -> dict[str, Any]:
    """The quest stage onto the player's card with the NPC; the `quest.updated` frame."""
    try:
        await turn_context_cached(message.npc_id)
    except NPC.DoesNotExist:
        raise ProtocolError("unknown_npc", f"no NPC has npc_id {message.npc_id!r}") from None
    try:
        card = await memory_quest_update(
            session.redis, npc=message.npc_id, player=session.player_id, session=session.session_id,
            quest=message.quest, stage=message.stage,
        )  # fmt: skip
    except QuestCardFull as exc:
        raise ProtocolError("too_large", str(exc)) from None
    except QuestStageInvalid as exc:
        # The protocol's Slug already refuses these; a second check must not become `internal`.
        raise ProtocolError("bad_frame", str(exc)) from None
    except RedisError as exc:
        logger.error("quest card of %s for %s not written: %s", message.npc_id, session.player_id, exc)
        raise ProtocolError("unavailable", "the memory store did not answer; send npc.quest again") from None
    updated = {"type": "quest.updated", "request_id": message.request_id, "npc_id": message.npc_id}
    return {**updated, "quests": card}


async def positions_apply(session: GameSession, message: WorldPositions) -> list[dict[str, Any]]:
    """The region's activation tiers from the frame: what changed goes back as `npc.tier` frames,
    and NPCs promoted to Gold get their memory and lore fetched before they are spoken to."""
    try:
        update = await tiers_apply(session.redis, message)
    except UnknownRegion as exc:
        raise ProtocolError("unknown_region", str(exc)) from None
    except BadPositions as exc:  # what the protocol's own checks let through
        raise ProtocolError("bad_frame", f"world.positions: {exc}") from None
    except RedisError as exc:
        logger.error("tiers of %s not published: %s", message.region, exc)
        raise ProtocolError("unavailable", "the tier store did not answer; send positions again") from None
    for change in gold_promotions(update):
        assert change.player_id is not None  # gold_promotions keeps changes near a player
        in_background(
            turn_inputs_prefetch(redis=session.redis, npc_id=change.npc_id, player_id=change.player_id)
        )
    return list(tier_frames(message.region, update))
