"""Protocol v1 through Channels' WebsocketCommunicator on the real ASGI app, Postgres and Redis.

Turns here run without a model (the worker-down bark); tests/bridge/test_bridge_e2e.py streams
real turns through Daphne and a vLLM worker.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync

from console.models import GameClientKey
from console.services.keys import game_key_create, game_key_revoke
from tests.bridge.conftest import connect, frames_until, resume_attempt, send, started

# Transactional: each consumer reaches the database through its own connection, as in Daphne.
pytestmark = pytest.mark.django_db(transaction=True)


def run(scenario):
    """Run an async scenario so that its database calls share the test's connection."""
    return async_to_sync(scenario)()


@pytest.mark.parametrize(
    ("make_secret", "expected"),
    [
        (lambda: None, 4401),
        (lambda: "rvk_" + "x" * 43, 4401),
        (lambda: "not-even-a-key", 4401),
    ],
    ids=["no key", "unknown key", "malformed key"],
)
def test_connect_without_a_valid_key_is_closed_with_4401_before_accept(make_secret, expected):
    async def scenario():
        connected, code = await connect(make_secret()).connect()
        return connected, code

    assert run(scenario) == (False, expected)


def test_a_revoked_key_is_refused(game_key):
    game_key_revoke(key=GameClientKey.objects.get())

    async def scenario():
        return await connect(game_key).connect()

    assert run(scenario) == (False, 4401)


def test_token_in_the_query_string_is_accepted_for_browsers(game_key):
    async def scenario():
        comm = connect(path=f"/ws/game/?token={game_key}")
        connected, _ = await comm.connect()
        await comm.disconnect()
        return connected

    assert run(scenario) is True


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [(None, True), (b"http://testserver", True), (b"https://evil.example", False)],
    ids=["native client", "same host", "foreign origin"],
)
def test_origin_missing_or_own_is_accepted_and_foreign_is_refused(game_key, origin, accepted):
    headers = [(b"host", b"testserver")] + ([(b"origin", origin)] if origin else [])

    async def scenario():
        comm = connect(game_key, headers=headers)
        result = await comm.connect()
        await comm.disconnect()
        return result

    assert run(scenario) == ((True, None) if accepted else (False, 4403))


def test_a_turn_streams_start_deltas_and_end_with_increasing_seq(game_key, npc, no_worker):
    async def scenario():
        comm = connect(game_key)
        ready = await started(comm)
        await send(comm, {"type": "npc.say", "request_id": "r1", "npc_id": "count-test", "text": "Hello"})
        frames = await frames_until(comm, "turn.end")
        await comm.disconnect()
        return ready, frames

    ready, frames = run(scenario)

    assert (ready["seq"], ready["session_id"][:2], ready["protocol"]) == (1, "s_", 1)
    start, *deltas, end = frames
    assert start == {
        **start,
        "type": "turn.start",
        "request_id": "r1",
        "npc_id": "count-test",
        "tier": "gold",
    }
    assert deltas
    assert [frame["type"] for frame in deltas] == ["turn.delta"] * len(deltas)
    assert end["text"] == "".join(frame["text"] for frame in deltas)
    assert end["text"] in npc.archetype.barks["greet"] + npc.archetype.barks["idle"]
    assert end["emotion"] in npc.archetype.emotions
    assert end["action"] in npc.archetype.action_names
    assert "worker_down" in end["fallbacks"]
    assert set(end["usage"]) == {"prompt_tokens", "completion_tokens"}
    # A bark: no prompt was assembled and no emotion or action asked for.
    assert end["timing"] == {**end["timing"], "prompt_ms": None, "choices_ms": None}
    assert set(end["timing"]) == {"ttft_ms", "total_ms", "memory_ms", "lore_ms", "prompt_ms", "choices_ms"}
    assert [frame["seq"] for frame in frames] == list(range(2, 2 + len(frames)))
    assert {frame["turn_id"] for frame in frames} == {start["turn_id"]}


def test_ping_answers_pong_before_and_after_session_start(game_key):
    async def scenario():
        comm = connect(game_key)
        await comm.connect()
        await send(comm, {"type": "ping"})
        before = json.loads(await comm.receive_from())
        await send(comm, {"type": "session.start", "player_id": "p"})
        await comm.receive_from()
        await send(comm, {"type": "ping"})
        after = json.loads(await comm.receive_from())
        await comm.disconnect()
        return before, after

    before, after = run(scenario)

    assert before == {"type": "pong", "seq": 0}
    assert after == {"type": "pong", "seq": 2}


MALFORMED = [
    ("not json", "bad_json"),
    ("[1, 2]", "bad_json"),
    ('{"no": "type"}', "unknown_type"),
    ('{"type": "npc.dance"}', "unknown_type"),
    ('{"type": "npc.say", "request_id": "r", "npc_id": "count-test"}', "bad_frame"),
    ('{"type": "npc.say", "request_id": "r", "npc_id": "count-test", "text": 5}', "bad_frame"),
    ('{"type": "npc.say", "request_id": "r", "npc_id": "Count Test!", "text": "hi"}', "bad_frame"),
    ('{"type": "npc.say", "request_id": "r", "npc_id": "nobody", "text": "hi"}', "unknown_npc"),
    (
        '{"type": "npc.say", "request_id": "r", "npc_id": "count-test", "text": "' + "a" * 1001 + '"}',
        "too_large",
    ),
    ('{"type": "npc.cancel", "request_id": "never-sent"}', "unknown_request"),
    ('{"type": "ack", "seq": -1}', "bad_frame"),
    ('{"type": "world.positions", "region": "r", "players": [{"id": "p"}], "npcs": []}', "bad_frame"),
    ('{"type": "session.start", "player_id": "again"}', "bad_frame"),
]


@pytest.mark.parametrize(
    ("raw", "code"), MALFORMED, ids=[code + str(i) for i, (_, code) in enumerate(MALFORMED)]
)
def test_malformed_frames_get_an_error_and_the_connection_stays_usable(game_key, npc, no_worker, raw, code):
    async def scenario():
        comm = connect(game_key)
        await started(comm)
        await comm.send_to(text_data=raw)
        error = json.loads(await comm.receive_from())
        await send(comm, {"type": "ping"})
        pong = json.loads(await comm.receive_from())
        await comm.disconnect()
        return error, pong

    error, pong = run(scenario)

    assert (error["type"], error["code"]) == ("error", code), error
    assert error["message"]
    assert pong["type"] == "pong"


def test_binary_frames_get_an_error(game_key):
    async def scenario():
        comm = connect(game_key)
        await started(comm)
        await comm.send_to(bytes_data=b"\x00\x01")
        error = json.loads(await comm.receive_from())
        await comm.disconnect()
        return error

    assert run(scenario)["code"] == "binary_frame"


def test_npc_say_before_session_start_is_refused(game_key, npc):
    async def scenario():
        comm = connect(game_key)
        await comm.connect()
        await send(comm, {"type": "npc.say", "request_id": "r1", "npc_id": "count-test", "text": "Hi"})
        error = json.loads(await comm.receive_from())
        await comm.disconnect()
        return error

    error = run(scenario)

    assert error == {**error, "code": "not_started", "request_id": "r1", "seq": 0}


def test_frames_over_the_rate_limit_get_rate_limited_with_retry_after(game_key, settings):
    settings.BRIDGE_FRAMES_PER_S = 1.0
    settings.BRIDGE_FRAMES_BURST = 3

    async def scenario():
        comm = connect(game_key)
        await comm.connect()
        for _ in range(5):
            await send(comm, {"type": "ping"})
        replies = [json.loads(await comm.receive_from()) for _ in range(5)]
        await comm.disconnect()
        return replies

    replies = run(scenario)

    assert [reply["type"] for reply in replies] == ["pong", "pong", "pong", "error", "error"]
    assert replies[3]["code"] == "rate_limited"
    assert 0 < replies[3]["retry_after"] <= 1.0


def test_world_positions_need_the_positions_scope(db, npc):
    _, secret = game_key_create(name="play only", scopes=["play", "players"])
    frame = {
        "type": "world.positions",
        "region": "r",
        "players": [{"id": "p", "x": 0.0, "y": 0.0, "z": 0.0}],
        "npcs": [],
    }

    async def scenario():
        comm = connect(secret)
        await started(comm)
        await send(comm, frame)
        error = json.loads(await comm.receive_from())
        await comm.disconnect()
        return error

    assert run(scenario)["code"] == "forbidden"


def test_resume_after_an_abrupt_disconnect_replays_every_missed_frame_once(game_key, npc, no_worker):
    async def scenario():
        first = connect(game_key)
        ready = await started(first)
        await send(first, {"type": "npc.say", "request_id": "r1", "npc_id": "count-test", "text": "Hello"})
        frames = await frames_until(first, "turn.end")
        # The client saw only the first two frames before its connection died.
        last_seq = frames[1]["seq"]
        await first.disconnect(code=1006)
        second = connect(game_key)
        await second.connect()
        resume = {"session_id": ready["session_id"], "last_seq": last_seq}
        await send(second, {"type": "session.start", "player_id": "player-1", "resume": resume})
        replayed = await frames_until(second, "session.ready")
        await second.disconnect()
        return frames, last_seq, replayed

    frames, last_seq, replayed = run(scenario)

    *missed, ready = replayed
    assert missed == [frame for frame in frames if frame["seq"] > last_seq]
    assert (ready["resumed"], ready["replayed"]) == (True, len(missed))
    assert [frame["seq"] for frame in replayed] == list(range(last_seq + 1, last_seq + 1 + len(replayed)))


def test_a_session_cannot_be_resumed_with_another_key(game_key, npc, no_worker):
    _, other = game_key_create(name="someone else", scopes=["play", "players"])

    async def scenario():
        first = connect(game_key)
        ready = await started(first)
        await first.disconnect()
        return await resume_attempt(connect(other), session_id=ready["session_id"], player_id="player-1")

    assert run(scenario)["code"] == "unknown_session"


def test_a_client_that_stops_acknowledging_is_disconnected_and_one_that_acks_is_not(game_key, settings):
    settings.BRIDGE_MAX_UNACKED = 5

    async def scenario(acks: bool):
        comm = connect(game_key)
        await started(comm)
        closed_with = None
        for _ in range(10):
            await send(comm, {"type": "ping"})
            output = await comm.receive_output(timeout=5)
            if output["type"] == "websocket.close":
                closed_with = output["code"]
                break
            if acks:
                await send(comm, {"type": "ack", "seq": json.loads(output["text"])["seq"]})
        await comm.disconnect()
        return closed_with

    assert async_to_sync(scenario)(False) == 4408
    assert async_to_sync(scenario)(True) is None


def test_session_start_while_redis_is_down_gets_unavailable_and_the_socket_stays_usable(game_key, settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # the discard port: nothing answers

    async def scenario():
        comm = connect(game_key)
        await comm.connect()
        await send(comm, {"type": "session.start", "player_id": "p1"})
        refused = json.loads(await comm.receive_from(timeout=15))
        await send(comm, {"type": "ping"})
        pong = json.loads(await comm.receive_from())
        await comm.disconnect()
        return refused, pong

    refused, pong = run(scenario)

    assert (refused["type"], refused["code"]) == ("error", "unavailable")
    assert pong["type"] == "pong"


def test_the_next_npc_say_is_accepted_as_soon_as_turn_end_arrives(game_key, npc, no_worker):
    async def scenario():
        comm = connect(game_key)
        await started(comm)
        await send(comm, {"type": "npc.say", "request_id": "r0", "npc_id": npc.slug, "text": "Hello."})
        await frames_until(comm, "turn.end")
        await send(comm, {"type": "npc.say", "request_id": "r1", "npc_id": npc.slug, "text": "Again."})
        frames = await frames_until(comm, "turn.end")
        await comm.disconnect()
        return frames

    frames = run(scenario)

    assert [frame["type"] for frame in frames if frame["type"] in ("turn.error", "error")] == []
    assert frames[-1]["request_id"] == "r1"
