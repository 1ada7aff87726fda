"""The playtest page in headless Chromium (Debian's package, driven by Playwright): a designer
signs in, picks an NPC and chats with it through the real Daphne, the real websocket and the
real vLLM worker with a LoRA adapter."""

from __future__ import annotations

import os
import re

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, User
from playwright.sync_api import expect, sync_playwright

from console.permissions import DESIGNERS, groups_sync
from tests.bridge.conftest import CHROMIUM_ARGS, PASSWORD

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


# Every distinct text the NPC's line showed while its turn was still streaming.
WATCH_STREAMING = """() => {
  window.streamedTexts = new Set();
  new MutationObserver(() => {
    const card = document.querySelector("#playtest-log .turn");
    if (card && card.classList.contains("streaming")) {
      window.streamedTexts.add(card.querySelector(".npc").textContent);
    }
  }).observe(document.getElementById("playtest-log"), {subtree: true, childList: true, characterData: true});
}"""


def test_a_designer_chats_with_an_npc_on_the_playtest_page(chromium, daphne, speaking_npc):
    npc, lora_name = speaking_npc
    emotions, actions = set(npc.archetype.emotions), set(npc.archetype.action_names)
    groups_sync(apps)  # a transactional test flushed the groups the migrations made
    user = User.objects.create_user("playtester", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=DESIGNERS))
    console = daphne.removesuffix("/ws/game/").replace("ws://", "http://")

    # No ORM below: Playwright's sync API runs an event loop in this thread.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{console}/admin/login/?next=/playtest/")
        page.fill("#id_username", "playtester")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{console}/playtest/")
        expect(page.locator("#playtest-status")).to_have_text("Connected.", timeout=30_000)

        page.select_option("#playtest-npc", npc.slug)
        page.evaluate(WATCH_STREAMING)
        page.fill("#playtest-text", "<b>Ahoy!</b> Tell me about your ship and the sea.")
        page.click("#playtest-send")
        card = page.locator("#playtest-log .turn").first
        expect(card).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=240_000)

        streamed = page.evaluate("() => [...window.streamedTexts]")
        final_text = card.locator(".npc").text_content()
        fields = {
            name: card.locator(f'[data-field="{name}"]').text_content()
            for name in ("adapter", "tier", "emotion", "action", "ttft", "total")
        }
        player_html = card.locator(".player").inner_html()
        bold_elements = card.locator("b").count()
        if os.environ.get("PLAYTEST_SCREENSHOT"):
            page.screenshot(path=os.environ["PLAYTEST_SCREENSHOT"], full_page=True)
        browser.close()

    # Deltas appeared live: the line showed text while the turn was still streaming (before
    # turn.end). How many deltas a reply makes depends on its length (the guardrail holds back
    # the newest characters); test_bridge_e2e counts them on the wire.
    partial = [text for text in streamed if text]
    assert partial, streamed
    assert all(final_text.startswith(text) for text in partial)
    assert len(final_text.strip()) > 10
    assert fields["adapter"] == f"adapter {lora_name}"
    assert fields["tier"] == "tier gold"
    assert fields["emotion"].removeprefix("emotion ") in emotions
    assert fields["action"].removeprefix("action ") in actions
    assert re.fullmatch(r"first token [\d.]+ ms", fields["ttft"])
    assert re.fullmatch(r"total [\d.]+ ms", fields["total"])
    # What the player typed is shown as text, never parsed as HTML.
    assert "&lt;b&gt;Ahoy!&lt;/b&gt;" in player_html
    assert bold_elements == 0
