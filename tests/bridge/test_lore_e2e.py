"""NPCs know their lore, end to end: the demo lore ingested for real (embeddings, pgvector),
lore packs built by the Celery worker into Redis, and turns through Daphne and the vLLM worker
whose lore slot (the trace observers receive) holds what the NPC may know and nothing gated."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings
from websockets.asyncio.client import connect

from bridge.turn_io import OBSERVER_GROUP
from console.jobs.models import JobStatus
from console.lore.ingest import ingest_job_run
from console.lore.packs import pack_key
from console.models import IngestJob, LoreChunk
from inference.residency import residency_sync
from tests.factories import ArchetypeFactory, NPCFactory, RegionFactory, WorldFactory, suite_base_model

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DEMO_LORE = Path(settings.DEMO_DIR) / "lore"
SECRET_QUESTION = "Tell me of Lady Seraphine Valerian, the Count's elder sister. When was she born?"


@pytest.fixture
def lore_world(base_model_dir, vllm_worker):
    """The demo's lore in a world with a vampire count and a zombie, both on the test model."""
    base_model = suite_base_model(base_model_dir)
    world = WorldFactory()
    region = RegionFactory(world=world, name="Hollowmere")
    npcs = {}
    for slug, name in (("vampire", "Count Valerian"), ("zombie", "Shambler")):
        archetype = ArchetypeFactory(
            world=world,
            slug=slug,
            name=slug.title(),
            base_model=base_model,
            content_policy={"blocked_terms": []},
        )
        npcs[slug] = NPCFactory(
            archetype=archetype, region=region, name=name, slug=f"{slug}-{uuid.uuid4().hex[:6]}"
        )
    job = ingest_job_run(IngestJob.objects.create(world=world, source=str(DEMO_LORE)))
    assert job.status == JobStatus.SUCCEEDED, job.error
    residency_sync(workers=[vllm_worker.url])
    return npcs


async def _ask_until_lore(url: str, key: str, npc: str, question: str) -> tuple[dict[str, Any], list[dict]]:
    """Ask `question` until a turn gets lore (the first asks for the NPC's pack, and the bridge
    loads its embedding model in the background): that turn's reply and observed trace."""
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(OBSERVER_GROUP, channel)
    observed: list[dict] = []
    try:
        async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
            await socket.send(json.dumps({"type": "session.start", "player_id": f"p-{uuid.uuid4().hex[:8]}"}))
            deadline = time.monotonic() + 400
            for attempt in range(12):
                request = f"r{attempt}"
                await socket.send(
                    json.dumps({"type": "npc.say", "request_id": request, "npc_id": npc, "text": question})
                )
                async with asyncio.timeout(240):
                    async for raw in socket:
                        frame = json.loads(raw)
                        assert frame["type"] not in ("error", "turn.error"), frame
                        if frame["type"] == "turn.end":
                            break
                async with asyncio.timeout(30):
                    while True:  # this turn's trace
                        trace = (await layer.receive(channel))["frame"]
                        if (trace["npc_id"], trace["request_id"]) == (npc, request):
                            break
                observed.append(trace)
                if trace["lore"] or time.monotonic() > deadline:
                    return frame, observed
                await asyncio.sleep(3)  # the Celery worker builds the pack meanwhile
    finally:
        await layer.group_discard(OBSERVER_GROUP, channel)
    return frame, observed


def _chunk_documents(trace: dict) -> list[tuple[str, str]]:
    """(document slug, text) of the chunks a turn's lore slot held."""
    ids = [entry["chunk"] for entry in trace["lore"]]
    return list(LoreChunk.objects.filter(pk__in=ids).values_list("document__slug", "text"))


def test_the_count_answers_from_his_houses_lore_and_the_zombie_never_gets_it(
    daphne, celery_worker_process, lore_world, key
):
    count, zombie = lore_world["vampire"], lore_world["zombie"]
    client = redis.Redis.from_url(settings.REDIS_URL)

    end, traces = asyncio.run(_ask_until_lore(daphne, key, count.slug, SECRET_QUESTION))

    assert client.exists(pack_key(count.slug)), "the Celery worker built the count's pack"
    # The trace shows the chunk of the one document that states the fact.
    used = _chunk_documents(traces[-1])
    assert any(slug == "the-red-testament" and "born in 1049" in text for slug, text in used), used
    assert all(entry["score"] >= settings.LORE_MIN_SCORE for entry in traces[-1]["lore"])
    assert end["text"]

    _, zombie_traces = asyncio.run(_ask_until_lore(daphne, key, zombie.slug, SECRET_QUESTION))

    assert client.exists(pack_key(zombie.slug))
    assert zombie_traces[-1]["lore"], "the zombie gets the lore it may know"
    for trace in zombie_traces:
        assert all(slug != "the-red-testament" for slug, _ in _chunk_documents(trace)), trace
    client.close()
