"""World Info import: SillyTavern / TavernAI lorebooks into lore documents."""

from __future__ import annotations

import json

import pytest

from console.jobs.models import JobStatus
from console.lore.files import LoreFileError
from console.lore.ingest import ingest_job_run
from console.lore.lorebook import lorebook_read
from console.models import IngestJob, LoreChunk, LoreDocument
from tests.factories import WorldFactory

pytestmark = pytest.mark.django_db

CARD_V2 = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Mirela",
        "character_book": {
            "name": "Mirela's Moor",
            "entries": [
                {"keys": ["Widow's Mere", "the mere"], "content": "The Widow's Mere has no bottom.",
                 "enabled": True, "insertion_order": 0, "id": 1, "name": "The Mere"},
                {"keys": ["Crowford"], "content": "Crowford drowned in the flood of 1174.", "enabled": True,
                 "insertion_order": 1, "id": 2},
                {"keys": ["secret"], "content": "Switched off.", "enabled": False, "insertion_order": 2,
                 "id": 3},
                {"keys": ["empty"], "content": "  ", "enabled": True, "insertion_order": 3, "id": 4},
            ],
        },
    },
}  # fmt: skip
WORLD_INFO = {
    "entries": {
        "0": {"uid": 0, "key": ["Greywood"], "keysecondary": [], "comment": "The Greywood",
              "content": "Old oaks with ash-grey bark.", "disable": False},
        "1": {"uid": 1, "key": ["Boundary Oak"], "comment": "", "content": "A lightning-split tree.",
              "disable": True},
    }
}  # fmt: skip


def test_a_character_card_becomes_one_document_per_enabled_entry():
    files = lorebook_read("mirela.json", json.dumps(CARD_V2).encode())

    assert [(f.title, f.source) for f in files] == [
        ("The Mere", "mirela.json#1"),
        ("Crowford", "mirela.json#2"),
    ]
    assert files[0].body.startswith("# The Mere\n\nKnown as: Widow's Mere, the mere.\n\nThe Widow's Mere")
    assert files[0].slug == "mirelas-moor-the-mere-1"  # book, title, entry id: stable across imports


def test_a_sillytavern_world_info_file_is_read_too():
    files = lorebook_read("moor.json", json.dumps(WORLD_INFO).encode())

    assert [(f.title, f.body.splitlines()[-1]) for f in files] == [
        ("The Greywood", "Old oaks with ash-grey bark.")
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not a JSON lorebook"),
        (b"[1, 2]", "a lorebook is a JSON object"),
        (json.dumps({"data": {"name": "x"}}).encode(), "has no character_book"),
        (
            json.dumps({"entries": [{"keys": ["a"], "content": "", "enabled": True}]}).encode(),
            "no enabled entry",
        ),
        (json.dumps({"entries": "nope"}).encode(), "`entries` must be a list"),
    ],
)
def test_bad_lorebooks_say_what_is_wrong(data, message):
    with pytest.raises(LoreFileError, match=message):
        lorebook_read("book.json", data)


def test_a_lorebook_in_a_folder_is_ingested_with_the_markdown_next_to_it(tmp_path):
    (tmp_path / "mirela.json").write_text(json.dumps(CARD_V2))
    (tmp_path / "notes.md").write_text("# Notes\n\nThe moor is wide.")
    job = IngestJob.objects.create(world=WorldFactory(), source=str(tmp_path))

    ingest_job_run(job)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert set(LoreDocument.objects.values_list("title", flat=True)) == {"The Mere", "Crowford", "Notes"}
    assert LoreChunk.objects.filter(text__contains="no bottom").exists()
