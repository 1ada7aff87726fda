"""The weekly compaction: archived sessions older than the warm window get one summary each
(real Postgres; no worker answers, so summaries are made from the lines)."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO

import pytest
from celery.schedules import crontab
from django.core.management import call_command
from django.utils import timezone

from memory.compaction import compaction_summary_id, memory_compact, session_summary_create
from memory.models import ForgottenPlayer, MemoryEvent, MemoryEventKind
from memory.selectors import stale_sessions_batch
from memory.services import player_forget
from memory.tasks import memory_compact_task
from tests.factories import MemoryEventFactory, NPCFactory

pytestmark = pytest.mark.django_db


def _days_ago(days: float):
    return timezone.now() - timedelta(days=days)


def _session(
    *, player: str = "alice", session: str = "s_1", days_ago: float, lines: int = 3, npc="count-valerian"
):
    """`lines` archived turns of a session that ended `days_ago` days ago, a minute apart."""
    end = _days_ago(days_ago)
    return [
        MemoryEventFactory(
            npc_slug=npc,
            player_id=player,
            session_id=session,
            occurred_at=end - timedelta(minutes=lines - 1 - index),
            payload={
                "player": f"{player} line {index}",
                "npc": f"reply {index}",
                "emotion": "calm",
                "action": "",
            },
        )
        for index in range(lines)
    ]


def _summaries():
    return MemoryEvent.objects.filter(kind=MemoryEventKind.SUMMARY).order_by("player_id", "session_id")


def test_each_old_session_gets_one_summary_from_its_turns(redis_client):
    NPCFactory(slug="count-valerian", name="Count Valerian")
    _session(session="s_1", days_ago=45)
    alice_second = _session(session="s_2", days_ago=40, lines=2)
    _session(player="bob", days_ago=31)

    report = memory_compact(workers=[])

    summaries = list(_summaries())
    assert (report.sessions, report.summarised, report.by_model) == (3, 3, 0)
    assert [(event.player_id, event.session_id) for event in summaries] == [
        ("alice", "s_1"), ("alice", "s_2"), ("bob", "s_1"),
    ]  # fmt: skip
    second = summaries[1]
    assert second.event_id == compaction_summary_id(npc="count-valerian", player="alice", session="s_2")
    assert second.occurred_at == alice_second[-1].occurred_at  # at the session's end
    assert second.payload["session"] == "s_2"
    assert second.payload["turns"] == 2
    assert second.payload["compacted"] is True
    assert "Count Valerian" in second.payload["text"]
    assert "2 exchanges" in second.payload["text"]
    assert "alice line 1" not in second.payload["text"]  # no raw player line becomes a summary


def test_a_rerun_adds_nothing(redis_client):
    _session(days_ago=45)
    memory_compact(workers=[])

    again = memory_compact(workers=[])

    assert (again.sessions, again.summarised) == (0, 0)
    assert _summaries().count() == 1


def test_two_runs_over_the_same_sessions_write_each_summary_once(redis_client):
    _session(days_ago=45)
    cutoff = _days_ago(30)
    # Both runs read the session before either wrote its summary.
    first, second = (stale_sessions_batch(cutoff=cutoff, after=None, limit=10) for _ in range(2))

    written = [
        session_summary_create(stale=batch[0], text="A summary.", by="lines") for batch in (first, second)
    ]

    assert written == [True, False]
    assert _summaries().count() == 1


def test_sessions_inside_the_warm_window_are_untouched(redis_client):
    _session(session="recent", days_ago=2)
    _session(session="straddling", days_ago=45)
    MemoryEventFactory(session_id="straddling", occurred_at=_days_ago(1))  # the session went on
    _session(session="old", days_ago=45)

    report = memory_compact(workers=[])

    assert report.summarised == 1
    assert list(_summaries().values_list("session_id", flat=True)) == ["old"]
    assert MemoryEvent.objects.filter(session_id="straddling", kind=MemoryEventKind.TURN).count() == 4


def test_a_session_already_summarised_is_left_alone(redis_client):
    _session(days_ago=45)
    MemoryEventFactory(kind=MemoryEventKind.SUMMARY, occurred_at=_days_ago(45), payload={"text": "Earlier."})

    report = memory_compact(workers=[])

    assert report.sessions == 0
    assert list(_summaries().values_list("payload__text", flat=True)) == ["Earlier."]


def test_a_forgotten_players_sessions_are_not_resurrected(redis_client):
    _session(player="carol", days_ago=45)
    _session(player="dave", days_ago=45)
    player_forget(redis=redis_client, player="carol")

    report = memory_compact(workers=[])

    assert report.summarised == 1
    assert not MemoryEvent.objects.filter(player_id="carol").exists()


def test_a_player_forgotten_while_compaction_runs_gets_no_summary(redis_client):
    _session(player="carol", days_ago=45)
    batch = stale_sessions_batch(cutoff=_days_ago(30), after=None, limit=10)

    player_forget(redis=redis_client, player="carol")  # between the batch's read and its write
    written = session_summary_create(stale=batch[0], text="Carol's summary.", by="lines")

    assert written is False
    assert not MemoryEvent.objects.filter(player_id="carol").exists()


def test_a_player_who_came_back_after_being_forgotten_is_compacted_again(redis_client):
    ForgottenPlayer.objects.create(player_id="erin", forgotten_at=_days_ago(90))
    _session(player="erin", days_ago=45)

    report = memory_compact(workers=[])

    assert report.summarised == 1


def test_sessions_are_read_in_batches_and_progress_is_logged_in_percent(redis_client, caplog):
    for player in ("alice", "bob", "carol", "dave"):
        _session(player=player, days_ago=45, lines=1)
    progress = []

    with caplog.at_level(logging.INFO, logger="memory.compaction"):
        report = memory_compact(
            workers=[], batch_size=3, on_progress=lambda done, total: progress.append((done, total))
        )

    assert report.summarised == 4
    assert progress == [(3, 4), (4, 4)]
    assert "75% (3 of 4 sessions" in caplog.text
    assert "100% (4 of 4 sessions" in caplog.text


def test_compact_memory_command(redis_client):
    _session(days_ago=45)
    _session(player="bob", days_ago=45)
    out = StringIO()

    call_command("compact_memory", "--no-model", "--batch-size", "1", stdout=out, stderr=StringIO())
    call_command("compact_memory", "--no-model", stdout=out, stderr=StringIO())

    text = out.getvalue()
    assert "compacted 2 session(s): 2 summaries written (0 by the model, 2 from the lines)" in text
    assert "compacted 0 session(s)" in text
    assert _summaries().count() == 2


def test_the_task_runs_weekly_on_the_io_queue_and_compacts(redis_client, settings):
    settings.INFERENCE_WORKERS = []  # no model: the summaries come from the lines
    _session(days_ago=45)

    result = memory_compact_task()
    entry = next(
        entry for entry in settings.CELERY_BEAT_SCHEDULE.values() if entry["task"] == memory_compact_task.name
    )

    assert result["summarised"] == 1
    assert isinstance(entry["schedule"], crontab)
    assert len(entry["schedule"].day_of_week) == 1
    assert settings.CELERY_TASK_ROUTES[memory_compact_task.name] == {"queue": "io"}
