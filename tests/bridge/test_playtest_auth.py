"""The playtest page's socket: a console user's session cookie instead of a game key.

Through Channels' WebsocketCommunicator on the real ASGI app (AuthMiddlewareStack), Postgres
and Redis; turns run without a model (the worker-down bark).
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps
from django.contrib.auth.models import Group
from django.test import Client

from console.permissions import DESIGNERS, OPS, groups_sync
from tests.bridge.conftest import connect, frames_until, resume_attempt, send
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _groups(transactional_db):
    # A transactional test flushes the tables, the groups created by migrations with them.
    groups_sync(apps)


SAME_HOST = [(b"host", b"testserver"), (b"origin", b"http://testserver")]


def _session_cookie(*, group: str | None, is_active: bool = True) -> tuple[bytes, bytes]:
    return _playtester(group=group, is_active=is_active)[0]


def _playtester(*, group: str | None, is_active: bool = True) -> tuple[tuple[bytes, bytes], str]:
    """A console user's session cookie header, and the one player id their socket may play."""
    user = _user(group=group, is_active=is_active)
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()), f"playtest-user-{user.pk}"


def _user(*, group: str | None, is_active: bool = True):
    user = UserFactory(is_staff=True, is_active=is_active)
    if group is not None:
        user.groups.add(Group.objects.get(name=group))
    return user


def run(scenario):
    return async_to_sync(scenario)()


@pytest.mark.parametrize("group", [DESIGNERS, OPS])
def test_a_playtester_cookie_from_the_console_page_plays_a_turn(group, npc, no_worker):
    cookie, player_id = _playtester(group=group)

    async def scenario():
        comm = connect(headers=[*SAME_HOST, cookie])
        connected, code = await comm.connect()
        assert connected, code
        await send(comm, {"type": "session.start", "player_id": player_id})
        await send(comm, {"type": "npc.say", "request_id": "r1", "npc_id": npc.slug, "text": "Hello?"})
        frames = await frames_until(comm, "turn.end")
        await comm.disconnect()
        return frames

    frames = run(scenario)

    assert frames[0]["type"] == "session.ready"
    assert frames[-1]["request_id"] == "r1"
    assert frames[-1]["text"] == "".join(f["text"] for f in frames if f["type"] == "turn.delta")


@pytest.mark.parametrize(
    ("origin", "group", "is_active", "expected"),
    [
        (None, DESIGNERS, True, 4401),  # a cookie without an Origin is not the console page
        (b"http://evil.example", DESIGNERS, True, 4403),  # cross-site websocket hijacking
        (b"http://testserver", None, True, 4401),  # staff, but no playtest permission
        (b"http://testserver", DESIGNERS, False, 4401),  # deactivated account
    ],
    ids=["no origin", "foreign origin", "no permission", "inactive"],
)
def test_a_cookie_is_refused_without_the_page_origin_or_the_permission(origin, group, is_active, expected):
    cookie = _session_cookie(group=group, is_active=is_active)
    headers = [(b"host", b"testserver"), cookie] + ([(b"origin", origin)] if origin else [])

    async def scenario():
        return await connect(headers=headers).connect()

    assert run(scenario) == (False, expected)


def test_a_playtester_has_only_the_play_scope(npc, no_worker):
    cookie, player_id = _playtester(group=DESIGNERS)

    async def scenario():
        comm = connect(headers=[*SAME_HOST, cookie])
        await comm.connect()
        await send(comm, {"type": "session.start", "player_id": player_id})
        await frames_until(comm, "session.ready")
        positions = {"type": "world.positions", "region": "r", "players": [], "npcs": []}
        await send(comm, positions)
        frame = json.loads(await comm.receive_from())
        await comm.disconnect()
        return frame

    frame = run(scenario)

    assert frame["type"] == "error"
    assert frame["code"] == "forbidden"


def test_a_session_started_by_a_playtester_cannot_be_resumed_with_a_game_key(npc, game_key):
    cookie, player_id = _playtester(group=DESIGNERS)

    async def scenario():
        comm = connect(headers=[*SAME_HOST, cookie])
        await comm.connect()
        await send(comm, {"type": "session.start", "player_id": player_id})
        ready = (await frames_until(comm, "session.ready"))[-1]
        await comm.disconnect()
        return await resume_attempt(connect(game_key), session_id=ready["session_id"], player_id=player_id)

    frame = run(scenario)

    assert frame["type"] == "error"
    assert frame["code"] == "unknown_session"
