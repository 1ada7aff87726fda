"""Designers edit through the admin: validation messages, versions and restore, game keys."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from console.models import Archetype, GameClientKey
from console.models.npcs import NPCStatus
from console.services.keys import game_key_authenticate
from tests.factories import ArchetypeFactory, NPCFactory, UserFactory

pytestmark = pytest.mark.django_db


def _archetype_form(archetype: Archetype, **changes) -> dict[str, str]:
    data = {
        "world": str(archetype.world_id),
        "slug": archetype.slug,
        "name": archetype.name,
        "base_model": "",
        "persona": archetype.persona,
        "speech_style": archetype.speech_style,
        "personality_traits": json.dumps(archetype.personality_traits),
        "lexicon": json.dumps(archetype.lexicon),
        "allowed_actions": json.dumps(archetype.allowed_actions),
        "emotions": json.dumps(archetype.emotions),
        "barks": json.dumps(archetype.barks),
        "content_policy": json.dumps(archetype.content_policy),
        "voice_service_url": "",
        "facial_service_url": "",
        "body_service_url": "",
        "subfactions-TOTAL_FORMS": "0",
        "subfactions-INITIAL_FORMS": "0",
        "subfactions-MIN_NUM_FORMS": "0",
        "subfactions-MAX_NUM_FORMS": "1000",
        "examples-TOTAL_FORMS": "0",
        "examples-INITIAL_FORMS": "0",
        "examples-MIN_NUM_FORMS": "0",
        "examples-MAX_NUM_FORMS": "1000",
    }
    data.update(changes)
    return data


def test_designer_edits_persona_then_restores_the_previous_version(designer_client):
    archetype = ArchetypeFactory(persona="You are Count Valerian, first version.")
    change_url = reverse("admin:console_archetype_change", args=[archetype.pk])

    response = designer_client.post(
        change_url, _archetype_form(archetype, persona="You are Count Valerian, v2.")
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    archetype.refresh_from_db()
    assert archetype.persona == "You are Count Valerian, v2."

    first_version = archetype.history.order_by("history_date").first()
    revert_url = reverse(
        "admin:console_archetype_simple_history", args=[archetype.pk, first_version.history_id]
    )
    response = designer_client.post(revert_url, _archetype_form(archetype, persona=first_version.persona))

    archetype.refresh_from_db()
    assert response.status_code == 302
    assert archetype.persona == "You are Count Valerian, first version."
    assert archetype.history.count() == 3  # created, edited, restored


def test_admin_form_names_the_field_and_rule_for_a_bad_action(designer_client):
    archetype = ArchetypeFactory()
    bad_actions = json.dumps([{"name": "Bare Fangs", "description": "Show fangs."}])

    response = designer_client.post(
        reverse("admin:console_archetype_change", args=[archetype.pk]),
        _archetype_form(archetype, allowed_actions=bad_actions),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "'Bare Fangs' is not a valid name" in errors["allowed_actions"][0]


def test_admin_form_reports_broken_json(designer_client):
    archetype = ArchetypeFactory()

    response = designer_client.post(
        reverse("admin:console_archetype_change", args=[archetype.pk]),
        _archetype_form(archetype, emotions='["neutral", '),
    )

    assert response.status_code == 200
    assert "emotions" in response.context["adminform"].form.errors


def test_ops_creates_a_game_key_and_sees_the_secret_once(ops_client):
    response = ops_client.post(
        reverse("admin:console_gameclientkey_add"),
        {"name": "godot-client", "scopes": ["play"], "active": "on"},
        follow=True,
    )

    key = GameClientKey.objects.get(name="godot-client")
    secret = response.content.decode().split('id="game-key-secret">', 1)[1].split("<", 1)[0]
    assert game_key_authenticate(secret=secret) == key
    assert key.created_by is not None
    listing = ops_client.get(reverse("admin:console_gameclientkey_changelist")).content.decode()
    assert secret not in listing


def test_admin_pages_load_the_console_stylesheet_from_our_own_static_files(designer_client):
    page = designer_client.get(reverse("admin:console_archetype_changelist")).content.decode()

    assert "console/console.css" in page
    assert "cdn" not in page.lower()


def test_the_playtest_page_lists_active_npcs_escaped_and_needs_the_permission(designer_client, client):
    NPCFactory(name="<img src=x onerror=alert(1)>", slug="xss-npc")
    NPCFactory(name="Gone", slug="gone-npc", status=NPCStatus.DEAD)
    no_permission = Client()
    no_permission.force_login(UserFactory(is_staff=True))

    page = designer_client.get("/playtest/")

    assert page.status_code == 200
    html = page.content.decode()
    assert 'value="xss-npc"' in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img src=x" not in html
    assert "gone-npc" not in html
    assert no_permission.get("/playtest/").status_code == 403
    assert client.get("/playtest/").status_code == 302  # to the login page
