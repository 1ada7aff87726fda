"""The game websocket `/ws/game/`: protocol v1 (docs/protocol.md).

The consumer authenticates, validates and rate-limits frames, and runs each `npc.say` as a
task that streams the turn's deltas straight to the session's socket. The channel layer
(which drops silently at capacity) only carries finished turns to observers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from bridge.auth import (
    Caller,
    bearer_token,
    caller_authenticate,
    caller_still_allowed,
    origin_allowed,
    player_claim_refusal,
)
from bridge.limits import (
    ALL_TURNS_KEY,
    CONNECTIONS_KEY,
    TURNS_KEY,
    TokenBucket,
    admit,
    admit_refresh,
    admit_release,
)
from bridge.protocol import (
    PROTOCOL_VERSION,
    Ack,
    NpcCancel,
    NpcQuest,
    NpcSay,
    Ping,
    ProtocolError,
    SessionStart,
    WorldPositions,
    client_message_parse,
    error_frame,
    frame_dumps,
    turn_error_frame,
)
from bridge.sessions import GameSession, SlowConsumer, session_registry
from console.lore.packs import TurnLore, lore_for_turn, lore_pack_load
from console.models import NPC, GameKeyScope, NPCStatus
from console.services.keys import caller_group
from inference.activation import (
    BadPositions,
    UnknownRegion,
    gold_promotions,
    tier_current,
    tier_frames,
    tiers_apply,
)
from inference.context import TurnContext, turn_context_cached
from inference.observability import region_over_budget, turn_observe
from inference.prompts import Turn
from inference.turns import TurnResult, turn_result_payload, turn_run
from inference.workers import workers_healthy
from memory.prompt import memory_slot
from memory.tasks import lore_pack_task, memory_consolidate_task, memory_rehydrate_task
from memory.tiers import (
    PairMemory,
    QuestCardFull,
    QuestStageInvalid,
    memory_for_turn,
    memory_quest_update,
    memory_record_turn,
)

logger = logging.getLogger(__name__)

# Close codes (the 4xxx range is the application's).
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_SLOW_CONSUMER = 4408
CLOSE_TOO_MANY_CONNECTIONS = 4429

# What turn.end carries of a turn's result (docs/protocol.md); traces carry more.
TURN_END_FIELDS = ("text", "emotion", "action", "usage", "timing", "fallbacks")

# Finished turns for observers (ops and playtest pages), through the channel layer.
OBSERVER_GROUP = "observe.turns"


class GameConsumer(AsyncWebsocketConsumer):
    caller: Caller
    session: GameSession | None

    async def connect(self) -> None:
        self.session = None
        self._watch: asyncio.Task[None] | None = None
        self._admitted: list[str] = []  # the connection sets this socket counts in (bridge.limits)
        self._groups: list[str] = []
        if not origin_allowed(dict(self.scope)):
            logger.warning("game socket refused: foreign origin")
            await self.close(code=CLOSE_FORBIDDEN_ORIGIN)
            return
        caller = await database_sync_to_async(caller_authenticate)(dict(self.scope))
        if caller is None:
            # The secret is never logged, not even a wrong one.
            logger.warning(
                "game socket refused: %s",
                "invalid game key" if bearer_token(dict(self.scope)) else "no credential",
            )
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.caller = caller
        self.frames = TokenBucket(settings.BRIDGE_FRAMES_PER_S, settings.BRIDGE_FRAMES_BURST)
        self.says = TokenBucket(settings.BRIDGE_SAYS_PER_S, settings.BRIDGE_SAYS_BURST)
        self.positions = TokenBucket(settings.BRIDGE_POSITIONS_PER_S, settings.BRIDGE_POSITIONS_BURST)
        self.socket_id = "c_" + secrets.token_urlsafe(12)
        await self.accept()
        if not await self._connection_admit():
            return
        # Revoking the key or the console user closes this socket (console.services.keys).
        if self.channel_layer is not None:
            group = caller_group(caller.owner)
            try:
                await self.channel_layer.group_add(group, self.channel_name)
                self._groups.append(group)
            except Exception as exc:  # noqa: BLE001 - the periodic re-check still closes a revoked socket
                logger.warning("revocations will reach this socket late: %s", exc)
        self._watch = asyncio.get_running_loop().create_task(self._caller_watch())

    async def _connection_admit(self) -> bool:
        """Count this socket against its key's cap; over it, say so and close (after accept, so
        the client learns why: a close before accept is a bare HTTP 403)."""
        key = CONNECTIONS_KEY.format(owner=self.caller.owner)
        cap = settings.BRIDGE_MAX_CONNECTIONS_PER_KEY
        try:
            full = await admit(
                session_registry().redis, caps={key: cap}, member=self.socket_id,
                stale_s=3 * settings.BRIDGE_CALLER_RECHECK_S,
            )  # fmt: skip
        except RedisError as exc:
            # Sessions need Redis anyway; the cap is not worth refusing a connection over.
            logger.warning("connection cap not checked: %s", exc)
            return True
        if full is None:
            self._admitted.append(key)
            return True
        logger.warning("game socket refused: %s holds %d sockets already", self.caller.label, cap)
        message = f"this key already holds {cap} open sockets (BRIDGE_MAX_CONNECTIONS_PER_KEY); close some"
        await self.send(text_data=frame_dumps({**error_frame("too_many_connections", message), "seq": 0}))
        await self.close(code=CLOSE_TOO_MANY_CONNECTIONS)
        return False

    async def _caller_watch(self) -> None:
        """Every BRIDGE_CALLER_RECHECK_S: is the key (or console user) still allowed? And this
        socket still counts against its key's connection cap."""
        redis = session_registry().redis
        while True:
            await asyncio.sleep(settings.BRIDGE_CALLER_RECHECK_S)
            try:
                allowed = await database_sync_to_async(caller_still_allowed)(self.caller)
            except Exception as exc:  # noqa: BLE001 - Postgres down: sockets keep talking (invariant 1)
                logger.info("could not re-check %s: %s", self.caller.label, exc)
                allowed = True
            if not allowed:
                await self._revoked()
                return
            try:
                await admit_refresh(redis, keys=self._admitted, member=self.socket_id)
            except RedisError as exc:
                logger.info("connection cap not refreshed: %s", exc)

    async def caller_revoked(self, event: dict[str, Any]) -> None:
        """The channel layer's message from console.services.keys.caller_disconnect."""
        await self._revoked()

    async def _revoked(self) -> None:
        logger.warning("closing a game socket (%s): its key or account was revoked", self.caller.label)
        try:
            await self._reply(error_frame("revoked", "this key or account was revoked; the socket closes"))
        except Exception as exc:  # noqa: BLE001 - the socket closes whatever happens to the notice
            logger.info("could not tell a revoked client why: %s", exc)
        if self.session is not None:
            for task in self.session.turns.values():
                task.cancel()
        await self.close(code=CLOSE_UNAUTHORIZED)

    async def disconnect(self, code: int) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for group in self._groups:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception as exc:  # noqa: BLE001 - the group's own expiry drops it later
                logger.info("could not leave %s: %s", group, exc)
        if self._admitted:
            try:
                await admit_release(session_registry().redis, keys=self._admitted, member=self.socket_id)
            except RedisError as exc:  # the member goes stale and stops counting
                logger.info("connection cap not released: %s", exc)
        if self.session is not None:
            # The player left (or lost the connection): what they said becomes memory now, once
            # the turns still being written to memory are there (a client may close right
            # after its last turn.end).
            _in_background(_consolidate_after_writes(self.session))
            # Its turns keep running for BRIDGE_RESUME_GRACE_S, buffering frames for a resume.
            self.session.detach(self._sink)

    async def _sink(self, text: str) -> None:
        await self.send(text_data=text)

    async def _reply(self, frame: dict[str, Any]) -> None:
        """A frame to this socket: through the session (numbered, buffered) once there is one."""
        if self.session is None:
            # Before session.start there is nothing to resume: seq 0, not buffered.
            await self.send(text_data=frame_dumps({**frame, "seq": 0}))
            return
        try:
            await self.session.send(frame)
        except SlowConsumer as exc:
            await self._slow_consumer(exc)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        request_id = None
        try:
            wait = self.frames.take()
            if wait:
                raise ProtocolError("rate_limited", "over the frame rate limit", retry_after=round(wait, 3))
            if text_data is None:
                raise ProtocolError("binary_frame", "binary frames are not accepted; send JSON text frames")
            message = client_message_parse(text_data, max_text_chars=settings.BRIDGE_MAX_TEXT_CHARS)
            request_id = getattr(message, "request_id", None)
            await self._dispatch(message)
        except ProtocolError as exc:
            frame = error_frame(exc.code, exc.message, request_id=exc.request_id or request_id, **exc.extra)
            await self._reply_safely(frame)
        except Exception:
            # A fault of ours must not close the socket (Channels would): the client learns the
            # frame was not applied, and the next frame is served as usual.
            logger.exception("a %s frame from %s failed", type(text_data).__name__, self.caller.label)
            frame = error_frame("internal", "the server failed on this frame; it was not applied")
            await self._reply_safely({**frame, **({"request_id": request_id} if request_id else {})})

    async def _reply_safely(self, frame: dict[str, Any]) -> None:
        """An error frame, if the session store and the socket let it through."""
        try:
            await self._reply(frame)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: the socket must survive
            logger.warning("could not send an %s frame: %s", frame.get("code"), exc)

    async def _dispatch(self, message: Any) -> None:
        if isinstance(message, Ping):
            await self._reply({"type": "pong"})
        elif isinstance(message, SessionStart):
            await self._session_start(message)
        elif self.session is None:
            raise ProtocolError("not_started", f"send session.start before {message.type}")
        elif isinstance(message, Ack):
            await self.session.ack(message.seq)
        elif isinstance(message, NpcSay):
            await self._npc_say(self.session, message)
        elif isinstance(message, NpcCancel):
            task = self.session.turns.get(message.request_id)
            if task is None:
                raise ProtocolError(
                    "unknown_request", f"no turn in flight has request_id {message.request_id}"
                )
            task.cancel()  # the turn task reports turn.error `cancelled`
        elif isinstance(message, NpcQuest):
            await self._npc_quest(self.session, message)
        elif isinstance(message, WorldPositions):
            self._require_scope(GameKeyScope.POSITIONS, message.type)
            wait = self.positions.take()
            if wait:
                raise ProtocolError(
                    "rate_limited", "over the world.positions rate limit", retry_after=round(wait, 3)
                )
            await self._positions(self.session, message)

    def _require_scope(self, scope: str, what: str) -> None:
        if scope not in self.caller.scopes:
            raise ProtocolError("forbidden", f"{what} needs a game key with the {str(scope)!r} scope")

    async def _session_start(self, message: SessionStart) -> None:
        if self.session is not None:
            raise ProtocolError(
                "bad_frame", f"session {self.session.session_id} already started on this socket"
            )
        refusal = await database_sync_to_async(player_claim_refusal)(
            caller=self.caller, player_id=message.player_id, player_token=message.player_token
        )
        if refusal is not None:
            raise ProtocolError("forbidden", refusal)
        try:
            await self._session_open(message)
        except RedisError as exc:
            logger.error("session.start failed: the session store did not answer: %s", exc)
            raise ProtocolError(
                "unavailable", "the session store did not answer; send session.start again"
            ) from None

    async def _session_open(self, message: SessionStart) -> None:
        registry = session_registry()
        replayed = 0
        if message.resume is None:
            session = await registry.start(player_id=message.player_id, owner=self.caller.owner)
            session.sink = self._sink
        else:
            session = await registry.resume(
                session_id=message.resume.session_id, player_id=message.player_id, owner=self.caller.owner
            )
            replayed = await session.attach(self._sink, last_seq=message.resume.last_seq)
        self.session = session
        await self._reply(
            {
                "type": "session.ready",
                "session_id": session.session_id,
                "protocol": PROTOCOL_VERSION,
                "resumed": message.resume is not None,
                "replayed": replayed,
            }
        )

    async def _npc_quest(self, session: GameSession, message: NpcQuest) -> None:
        self._require_scope(GameKeyScope.QUESTS, message.type)
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
            raise ProtocolError(
                "unavailable", "the memory store did not answer; send npc.quest again"
            ) from None
        updated = {"type": "quest.updated", "request_id": message.request_id, "npc_id": message.npc_id}
        await self._reply({**updated, "quests": card})

    async def _positions(self, session: GameSession, message: WorldPositions) -> None:
        """The region's activation tiers from the frame: what changed goes back as `npc.tier`,
        and NPCs promoted to Gold get their memory and lore fetched before they are spoken to."""
        try:
            update = await tiers_apply(session.redis, message)
        except UnknownRegion as exc:
            raise ProtocolError("unknown_region", str(exc)) from None
        except BadPositions as exc:  # what the protocol's own checks let through
            raise ProtocolError("bad_frame", f"world.positions: {exc}") from None
        except RedisError as exc:
            logger.error("tiers of %s not published: %s", message.region, exc)
            raise ProtocolError(
                "unavailable", "the tier store did not answer; send positions again"
            ) from None
        for frame in tier_frames(message.region, update):
            await self._reply(frame)
        for change in gold_promotions(update):
            assert change.player_id is not None  # gold_promotions keeps changes near a player
            _in_background(_gold_prefetch(session, change.npc_id, change.player_id))

    async def _npc_say(self, session: GameSession, message: NpcSay) -> None:
        self._require_scope(GameKeyScope.PLAY, message.type)
        wait = self.says.take()
        if wait:
            raise ProtocolError("rate_limited", "over the npc.say rate limit", retry_after=round(wait, 3))
        if message.request_id in session.turns:
            raise ProtocolError("duplicate_request", f"request_id {message.request_id} is already in flight")
        if message.npc_id in session.busy_npcs:
            await self._reply(
                turn_error_frame(
                    message.request_id,
                    "busy",
                    f"{message.npc_id} is answering request {session.busy_npcs[message.npc_id]}; "
                    "wait for its turn.end or send npc.cancel",
                )
            )
            return
        try:
            context = await turn_context_cached(message.npc_id)
        except NPC.DoesNotExist:
            raise ProtocolError("unknown_npc", f"no NPC has npc_id {message.npc_id!r}") from None
        if context.status != NPCStatus.ACTIVE:
            reason = f"{message.npc_id} is {context.status} and does not answer"
            await self._reply(turn_error_frame(message.request_id, "npc_unavailable", reason))
            return
        slot = f"{session.session_id}:{message.request_id}"
        refusal = await _turn_admit(session, owner=self.caller.owner, slot=slot)
        if refusal is not None:
            await self._reply(turn_error_frame(message.request_id, "busy", refusal))
            return
        session.busy_npcs[message.npc_id] = message.request_id
        task = asyncio.get_running_loop().create_task(self._turn(session, message, context, slot=slot))
        session.turns[message.request_id] = task

    async def _turn(self, session: GameSession, message: NpcSay, context: TurnContext, *, slot: str) -> None:
        request_id, npc_id = message.request_id, message.npc_id
        turn_id = "t_" + secrets.token_urlsafe(9)
        started_at = time.time()  # a forget of the player after this drops the turn's memory
        tier, tier_reason = settings.BRIDGE_DEFAULT_TIER, "default"
        adapter = context.routes.get("dialogue_style")

        released = False

        def release() -> None:
            """The NPC may take this session's next npc.say, and the turn stops counting against
            the caps (idempotent)."""
            nonlocal released
            session.turns.pop(request_id, None)
            if session.busy_npcs.get(npc_id) == request_id:
                del session.busy_npcs[npc_id]
            if not released:
                released = True
                _in_background(_turn_release(session, owner=self.caller.owner, slot=slot))

        async def delta(text: str) -> None:
            await session.send(
                {"type": "turn.delta", "request_id": request_id, "turn_id": turn_id, "text": text}
            )

        try:
            # Inside the try: whatever fails from here on, the turn ends with turn.end or turn.error.
            tier, tier_reason = await _turn_tier(session, context, npc_id)
            await session.send(
                {
                    "type": "turn.start",
                    "request_id": request_id,
                    "turn_id": turn_id,
                    "npc_id": npc_id,
                    "tier": tier,
                    "adapter": adapter,
                }
            )
            try:
                memory, source = await memory_for_turn(session.redis, npc_id, session.player_id)
            except RedisError as exc:
                # The NPC still answers, without its memory of this player, rather than not at all.
                logger.error("memory of %s for %s unavailable: %s", npc_id, session.player_id, exc)
                memory, source = PairMemory(), "unavailable"
            if source == "none":
                # Redis holds nothing of this pair: rebuild it from the archive in the background;
                # this turn goes on without it (a pair that never met simply finds nothing).
                _enqueue_once(session.redis, memory_rehydrate_task, npc_id, session.player_id)
            recent = list(memory.turns)[-settings.BRIDGE_HISTORY_TURNS :]
            lore = await _turn_lore(session, context, message.text, memory)
            result = await turn_run(
                context=context,
                player_text=message.text,
                workers=await workers_healthy(),
                history=[Turn(player=turn.player, npc=turn.npc) for turn in recent],
                memory=memory_slot(memory),
                lore=lore.slot,
                tier=tier,
                on_delta=delta,
            )
            payload = turn_result_payload(result)
            end = {
                "type": "turn.end",
                "request_id": request_id,
                "turn_id": turn_id,
                **{name: payload[name] for name in TURN_END_FIELDS},
                "memory": {
                    "source": source,
                    "turns": len(recent),
                    "facts": len(memory.facts) + len(memory.public_facts),
                },
            }
            # Released before turn.end goes out, not after: sending also writes the replay buffer
            # to Redis, and a client that answers turn.end at once must not find the NPC busy.
            # (An uncontended session lock is taken without yielding, so this turn.end still gets
            # its seq before any frame of the next turn.) Memory and observers follow in the
            # background: a cancel can no longer reach them.
            release()
            await session.send(end)
            # Observers (ops, playtest) also see which lore chunks the turn used, with their scores.
            observed = {**end, "npc_id": npc_id, "tier": tier, "adapter": adapter, "lore": lore.used}
            # What the archive keeps of the turn to explain it later (the trace page).
            trace = {
                **payload, "turn_id": turn_id, "tier_reason": tier_reason, "region": context.region_slug,
                "archetype": context.archetype_slug, "archetype_version": context.archetype_version,
                "lore": lore.used, "lore_state": lore.state, "memory": end["memory"],
                "messages": result.messages,
            }  # fmt: skip
            remembering = _in_background(
                _turn_after(session, context, message.text, result, observed, trace, started_at)
            )
            session.remembering.add(remembering)
            remembering.add_done_callback(session.remembering.discard)
        except asyncio.CancelledError:
            # npc.cancel, or the session expired: closing the engine stream aborted generation.
            await _quietly(session.send(turn_error_frame(request_id, "cancelled", "the turn was cancelled")))
        except SlowConsumer as exc:
            await self._slow_consumer(exc)
        except Exception:
            logger.exception("turn %s for %s failed", turn_id, npc_id)
            await _quietly(
                session.send(turn_error_frame(request_id, "internal", "the turn failed; try again"))
            )
        finally:
            release()

    async def _slow_consumer(self, exc: SlowConsumer) -> None:
        logger.warning("closing a game socket (%s): client not reading, %s", self.caller.label, exc)
        if self.session is not None:
            for task in self.session.turns.values():
                task.cancel()
            self.session.detach(self._sink)
        await self.close(code=CLOSE_SLOW_CONSUMER)


async def _turn_tier(session: GameSession, context: TurnContext, npc_id: str) -> tuple[str, str]:
    """The turn's tier and why: placed by positions, demoted by the region's budget, or the default."""
    tier, reason = settings.BRIDGE_DEFAULT_TIER, "default"
    try:
        placed = await tier_current(session.redis, npc_id, region=context.region_slug)
        if placed is not None:
            tier, reason = placed, "positions"
        if tier == "gold" and await region_over_budget(
            session.redis, context.region_slug, context.region_token_budget
        ):
            tier, reason = "silver", "region_budget"  # the region spent its tokens this hour
    except RedisError:
        pass  # the default tier: a turn is not refused for want of its tier
    return tier, reason


def _turn_caps(owner: str) -> dict[str, int]:
    """The sets a turn counts in, with their caps: its key's, and every worker's queue."""
    workers = max(1, len(settings.INFERENCE_WORKERS))
    return {
        TURNS_KEY.format(owner=owner): settings.BRIDGE_MAX_TURNS_PER_KEY,
        ALL_TURNS_KEY: settings.BRIDGE_MAX_TURNS_PER_WORKER * workers,
    }


async def _turn_admit(session: GameSession, *, owner: str, slot: str) -> str | None:
    """None when the turn may run, else why it is `busy` (a cap on turns in flight is reached)."""
    caps = _turn_caps(owner)
    try:
        full = await admit(session.redis, caps=caps, member=slot, stale_s=settings.BRIDGE_TURN_STALE_S)
    except RedisError as exc:
        logger.warning("turn caps not checked: %s", exc)  # the turn runs without its memory anyway
        return None
    if full is None:
        return None
    if full == ALL_TURNS_KEY:
        return f"the NPC workers are at capacity ({caps[full]} turns in flight); try again in a few seconds"
    return f"this key has {caps[full]} turns in flight (BRIDGE_MAX_TURNS_PER_KEY); wait for some to end"


async def _turn_release(session: GameSession, *, owner: str, slot: str) -> None:
    try:
        await admit_release(session.redis, keys=list(_turn_caps(owner)), member=slot)
    except RedisError as exc:  # the slot goes stale after BRIDGE_TURN_STALE_S and stops counting
        logger.info("turn slot %s not released: %s", slot, exc)


async def _turn_lore(
    session: GameSession, context: TurnContext, player_text: str, memory: PairMemory
) -> TurnLore:
    """The turn's lore slot; never waits on Postgres, a pack build or the embedding model."""
    try:
        lore = await lore_for_turn(
            session.redis, npc=context.npc_slug, archetype=context.archetype_slug,
            subfaction=context.subfaction_slug, player_text=player_text, quests=memory.quest,
        )  # fmt: skip
    except RedisError as exc:
        logger.warning("lore of %s unavailable: %s", context.npc_slug, exc)
        return TurnLore(state="unavailable")
    if lore.state == "no_pack":
        _enqueue_once(session.redis, lore_pack_task, context.npc_slug)
    # The trace of what the NPC was told, until turn traces are stored (ops issue).
    logger.info("lore for %s: %s %s", context.npc_slug, lore.state, lore.used)
    return lore


async def _gold_prefetch(session: GameSession, npc_id: str, player_id: str) -> None:
    """A Gold promotion: the NPC's turn context, its memory of the nearest player (hot tier) and
    its lore pack are loaded now, so its first turn does not wait on them; what Redis lacks is
    rebuilt in the background. Positions may name NPCs the console does not know: skipped."""
    try:
        await turn_context_cached(npc_id)
    except NPC.DoesNotExist:
        return
    try:
        _, source = await memory_for_turn(session.redis, npc_id, player_id)
        if source == "none":
            _enqueue_once(session.redis, memory_rehydrate_task, npc_id, player_id)
        if await lore_pack_load(session.redis, npc_id) is None:
            _enqueue_once(session.redis, lore_pack_task, npc_id)
    except RedisError as exc:
        logger.info("gold prefetch of %s skipped: %s", npc_id, exc)


async def _quietly(awaitable: Any) -> None:
    """Best effort on the way out of a turn: the session may be over its window or gone."""
    try:
        await awaitable
    except (SlowConsumer, OSError) as exc:
        logger.info("could not report a turn's end: %s", exc)


def _in_background(coroutine: Any) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


# One queued task per (task, NPC, player) at a time: SET NX with this prefix, for
# BRIDGE_MEMORY_TASK_ONCE_S. Cycling connections or positions frames used to queue a consolidation per
# disconnect and a rebuild per frame; the tasks are idempotent, so a skipped duplicate loses nothing.
QUEUED_ONCE_KEY = "bridge:queued:{name}:{args}"


def _enqueue_once(redis: Any, task: Any, *args: str) -> None:
    """Queue `task(*args)` unless the same call was queued within BRIDGE_MEMORY_TASK_ONCE_S."""

    async def enqueue() -> None:
        key = QUEUED_ONCE_KEY.format(name=task.name, args=":".join(args))
        try:
            first = await redis.set(key, "1", nx=True, ex=settings.BRIDGE_MEMORY_TASK_ONCE_S)
        except RedisError as exc:
            logger.info("queued-once check skipped: %s", exc)
            first = True
        if not first:
            return
        try:
            await asyncio.to_thread(task.delay, *args)
        except Exception as exc:  # noqa: BLE001 - background memory work must never fail a turn
            logger.warning("could not queue %s%s: %s", task.name, args, exc)
            with contextlib.suppress(RedisError):
                await redis.delete(key)  # the next trigger may try again

    _in_background(enqueue())


# Background tasks are referenced until they finish (the event loop keeps only weak references).
_background: set[asyncio.Task[None]] = set()


async def _consolidate_after_writes(session: GameSession) -> None:
    await asyncio.gather(*session.remembering, return_exceptions=True)
    for npc_id in list(session.talked):
        _enqueue_once(session.redis, memory_consolidate_task, npc_id, session.player_id)
        session.talked.discard(npc_id)


async def _turn_after(
    session: GameSession, context: TurnContext, player_text: str, result: TurnResult,
    observed: dict[str, Any], trace: dict[str, Any], started_at: float,
) -> None:  # fmt: skip
    await _remember(session, context.npc_slug, player_text, result, trace, started_at)
    try:
        await turn_observe(
            session.redis, npc=context.npc_slug, archetype=context.archetype_slug,
            region=context.region_slug, player=session.player_id, payload=trace,
        )  # fmt: skip
    except RedisError as exc:
        logger.info("ops figures missed a turn: %s", exc)
    await _observers_tell(observed)


async def _remember(
    session: GameSession, npc_id: str, player_text: str, result: TurnResult, trace: dict[str, Any],
    started_at: float,
) -> None:  # fmt: skip
    """The finished turn into memory (hot, Redis, the archive's stream), after the player has it."""
    try:
        turns = await memory_record_turn(
            session.redis,
            npc=npc_id,
            player=session.player_id,
            session=session.session_id,
            player_text=player_text,
            npc_text=result.text,
            emotion=result.emotion,
            action=result.action,
            trace=trace,
            started_at=started_at,
        )
    except RedisError as exc:
        # The player already has the reply; the turn is missing from memory and the archive.
        logger.error("turn of %s with %s not remembered: %s", npc_id, session.player_id, exc)
        return
    if not turns:
        logger.info(
            "turn of %s with %s not remembered: the player was forgotten meanwhile", npc_id, session.player_id
        )
        return
    session.talked.add(npc_id)
    if turns % settings.MEMORY_CONSOLIDATE_EVERY == 0:
        _enqueue_once(session.redis, memory_consolidate_task, npc_id, session.player_id)


async def _observers_tell(frame: dict[str, Any]) -> None:
    """A finished turn to the observers' group; losing one at capacity is acceptable there."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(OBSERVER_GROUP, {"type": "turn.finished", "frame": frame})
    except Exception as exc:  # noqa: BLE001 - observers must never break a player's turn
        logger.info("observers missed a turn: %s", exc)
