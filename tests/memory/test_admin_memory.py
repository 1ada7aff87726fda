"""The warm memory pages: designers read a pair's memory in Redis and choose public facts
(real Redis test database, the admin through Django's test client)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from console.permissions import DESIGNERS
from memory import pairs
from memory.archiver import Archiver
from memory.consolidation import pair_consolidate
from memory.pairs import HotMemory, pair_prefix, public_facts_key
from memory.selectors import warm_players_page
from tests.factories import NPCFactory, UserFactory
from tests.memory.conftest import load, talk

pytestmark = pytest.mark.django_db

RING = "They gave you a silver ring."


def _pair_url(npc: str, player: str) -> str:
    return reverse("admin:memory_warm_pair", args=[npc]) + "?" + urlencode({"player": player})


def _consolidate(redis_client, player: str) -> None:
    asyncio.run(
        pair_consolidate(
            redis=redis_client, npc="count-valerian", npc_name="Count Valerian", archetype="vampire",
            persona="You are Count Valerian.", player=player, workers=[],
        )
    )  # fmt: skip


def _alice_gave_a_ring(redis_client) -> None:
    talk("count-valerian", "alice", ["Good evening, Count.", "I brought you a silver ring."])
    _consolidate(redis_client, "alice")


def _publish(client: Client, *, player: str = "alice", fact: str = RING):
    return client.post(
        reverse("admin:memory_fact_publish", args=["count-valerian"]), {"player": player, "fact": fact}
    )


def test_a_designer_picks_an_npc_and_sees_the_players_it_remembers(designer_client, redis_client):
    NPCFactory(slug="count-valerian", name="Count Valerian")
    _alice_gave_a_ring(redis_client)
    talk("count-valerian", "bob", ["Hello."])
    talk("count-valerian-the-second", "carol", ["Hello."])  # another NPC whose slug starts alike

    picker = designer_client.get(reverse("admin:memory_warm_npcs"), {"q": "valerian"})
    npc_page = designer_client.get(reverse("admin:memory_warm_npc", args=["count-valerian"]))

    assert picker.status_code == 200
    assert reverse("admin:memory_warm_npc", args=["count-valerian"]) in picker.content.decode()
    assert npc_page.status_code == 200
    assert sorted(row.player for row, _ in npc_page.context["rows"]) == ["alice", "bob"]
    html = npc_page.content.decode()
    assert _pair_url("count-valerian", "alice").replace("&", "&amp;") in html
    assert "carol" not in html


def test_a_designer_sees_a_pairs_cards_facts_summaries_emotions_and_turns(designer_client, redis_client):
    _alice_gave_a_ring(redis_client)
    redis_client.hset(pair_prefix("count-valerian", "alice") + "quest", "The lost sister", "searching")

    response = designer_client.get(_pair_url("count-valerian", "alice"))

    assert response.status_code == 200
    pair = response.context["pair"]
    html = response.content.decode()
    assert ("gifts", "a silver ring") in response.context["card_rows"]
    assert pair.relationship["turns"] == 2
    assert "The lost sister" in html
    assert "searching" in html
    assert RING in html
    assert [(fact.text, fact.importance) for fact in pair.facts] == [(RING, 8.0)]
    assert pair.summaries
    assert pair.summaries[0].text in html
    assert [item.emotion for item in pair.emotions] == ["amused", "amused"]
    assert [turn.player for turn in pair.turns] == ["I brought you a silver ring.", "Good evening, Count."]
    assert "reply 1" in html
    assert "hot tier" in html  # public facts reach live conversations on the next Redis load


def test_the_pair_page_links_to_the_pairs_archived_events(designer_client, redis_client):
    talk("count-valerian", "alice", ["Alice's line."])
    talk("count-valerian", "bob", ["Bob's line."])
    archiver = Archiver(redis=redis_client, consumer="test", block_ms=10)
    archiver.group_ensure()
    archiver.drain()

    archive_url = designer_client.get(_pair_url("count-valerian", "alice")).context["archive_url"]
    archive = designer_client.get(archive_url)

    assert archive.status_code == 200
    assert [event.player_id for event in archive.context["cl"].result_list] == ["alice"]


def test_player_text_is_escaped(designer_client, redis_client):
    talk("count-valerian", "mallory", ["<script>alert('line')</script>"])
    redis_client.zadd(pair_prefix("count-valerian", "mallory") + "facts", {"<img src=x onerror=alert(1)>": 5})
    redis_client.zadd(public_facts_key("count-valerian"), {"<b>bold</b>": 5})

    pair_html = designer_client.get(_pair_url("count-valerian", "mallory")).content.decode()
    npc_html = designer_client.get(reverse("admin:memory_warm_npc", args=["count-valerian"])).content.decode()

    assert "<script>alert" not in pair_html
    # A player's words are stored neutralised (issue 17): no < > left to escape.
    assert "‹script›alert(&#x27;line&#x27;)‹/script›" in pair_html
    assert "<img src=x" not in pair_html
    assert "&lt;img src=x onerror=alert(1)&gt;" in pair_html
    assert "<b>bold</b>" not in npc_html
    assert "&lt;b&gt;bold&lt;/b&gt;" in npc_html


def test_a_published_fact_reaches_every_players_memory_with_its_importance(designer_client, redis_client):
    _alice_gave_a_ring(redis_client)

    response = _publish(designer_client)
    pairs._hot = HotMemory()  # bridges pick public facts up on their next load from Redis
    bob, _ = load("count-valerian", "bob")
    page = designer_client.get(response["Location"])

    assert response.status_code == 302
    assert redis_client.zscore(public_facts_key("count-valerian"), RING) == 8.0
    assert (RING, 8.0) in bob.public_facts
    assert [fact.public for fact in page.context["pair"].facts] == [True]
    assert "next loaded from Redis" in page.content.decode()  # the success message says when


def test_a_designer_unmarks_a_public_fact(designer_client, redis_client):
    _alice_gave_a_ring(redis_client)
    _publish(designer_client)

    response = designer_client.post(
        reverse("admin:memory_fact_unpublish", args=["count-valerian"]), {"fact": RING}
    )
    pairs._hot = HotMemory()

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:memory_warm_npc", args=["count-valerian"])
    assert redis_client.zcard(public_facts_key("count-valerian")) == 0
    assert load("count-valerian", "bob")[0].public_facts == []
    assert (
        redis_client.zscore(pair_prefix("count-valerian", "alice") + "facts", RING) == 8.0
    )  # alice keeps it


def test_only_a_fact_the_pair_holds_can_be_published(designer_client, redis_client):
    _alice_gave_a_ring(redis_client)

    response = _publish(designer_client, fact="The Count owes alice a castle.")
    page = designer_client.get(response["Location"])

    assert redis_client.zcard(public_facts_key("count-valerian")) == 0
    assert "Nothing published" in page.content.decode()


def test_a_user_without_the_publish_permission_gets_403(ops_client, redis_client):
    _alice_gave_a_ring(redis_client)

    page = ops_client.get(_pair_url("count-valerian", "alice"))
    publish = _publish(ops_client)
    unpublish = ops_client.post(
        reverse("admin:memory_fact_unpublish", args=["count-valerian"]), {"fact": RING}
    )

    assert page.status_code == 200  # ops read memory
    assert "Mark public" not in page.content.decode()
    assert (publish.status_code, unpublish.status_code) == (403, 403)
    assert redis_client.zcard(public_facts_key("count-valerian")) == 0


def test_staff_outside_the_groups_cannot_read_memory(redis_client):
    client = Client()
    client.force_login(UserFactory(is_staff=True))

    assert client.get(reverse("admin:memory_warm_npcs")).status_code == 403
    assert client.get(reverse("admin:memory_warm_npc", args=["count-valerian"])).status_code == 403


def test_anonymous_users_are_sent_to_login(redis_client):
    _alice_gave_a_ring(redis_client)
    client = Client()

    page = client.get(_pair_url("count-valerian", "alice"))
    publish = _publish(client)

    for response in (page, publish):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert redis_client.zcard(public_facts_key("count-valerian")) == 0


def test_publishing_needs_the_csrf_token(redis_client):
    _alice_gave_a_ring(redis_client)
    designer = UserFactory(is_staff=True)
    designer.groups.add(Group.objects.get(name=DESIGNERS))
    client = Client(enforce_csrf_checks=True)
    client.force_login(designer)

    response = _publish(client)

    assert response.status_code == 403
    assert redis_client.zcard(public_facts_key("count-valerian")) == 0


def test_the_archive_changelist_links_to_the_warm_memory_pages(designer_client):
    response = designer_client.get(reverse("admin:memory_memoryevent_changelist"))

    assert reverse("admin:memory_warm_npcs") in response.content.decode()


def test_players_are_paged_with_scan_and_each_is_listed_once(redis_client):
    for index in range(7):
        talk("count-valerian", f"player-{index}", ["Hello."])

    seen, cursor, pages = [], 0, 0
    while True:
        page = warm_players_page(
            redis=redis_client, npc="count-valerian", cursor=cursor, page_size=2, scan_count=2
        )
        seen += [row.player for row in page.players]
        pages += 1
        cursor = page.next_cursor
        if not cursor:
            break

    assert sorted(seen) == [f"player-{index}" for index in range(7)]
    assert pages > 1
