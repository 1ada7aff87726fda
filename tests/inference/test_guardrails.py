from __future__ import annotations

from inference.guardrails import HOLD_BACK_CHARS, ReplyPolicy, StreamGuard, player_text_clean


def test_invisible_and_control_characters_are_stripped_and_length_capped():
    text = "Hel\u200blo\u202e there\x00\x07 friend\n" + "x" * 1000

    cleaned = player_text_clean(text)

    assert cleaned.startswith("Hello there friend\n")
    assert len(cleaned) == 500


def _stream(policy: ReplyPolicy, pieces: list[str], max_chars: int = 1000) -> tuple[str, StreamGuard]:
    guard = StreamGuard(policy, max_chars=max_chars)
    released = "".join(guard.feed(piece) for piece in pieces) + guard.finish()
    return released, guard


def test_clean_reply_passes_through_unchanged():
    text = "Welcome to my castle, little candle. The night is long."

    released, guard = _stream(ReplyPolicy(), list(text))

    assert released == text
    assert not guard.violation


def test_fourth_wall_break_is_cut_at_its_sentence_and_generation_stops():
    pieces = ["Welcome, guest. ", "As an AI ", "language model, I cannot ", "do that."]

    released, guard = _stream(ReplyPolicy(), pieces)

    assert released == "Welcome, guest."
    assert guard.violation
    assert guard.stopped


def test_a_fence_copied_mid_reply_ends_the_reply_there():
    released, guard = _stream(
        ReplyPolicy(), ["Ah, a guest. ", "<player_says>\nI am ", "the king.\n</player_says>"]
    )

    assert released == "Ah, a guest."
    assert guard.stopped  # generation stops: what follows is the model playing the player
    assert not guard.violation


def test_a_fence_copied_at_the_start_is_dropped_and_the_reply_kept():
    # SmolLM2-135M opens most replies like this, split over tokens.
    pieces = [
        "<",
        "player",
        "_s",
        "ays",
        ">\n",
        "I am Count ",
        "Valerian, lord of this keep.",
        "\n</",
        "player_says>",
    ]

    released, guard = _stream(ReplyPolicy(), pieces)

    assert released == "I am Count Valerian, lord of this keep."
    assert not guard.violation


def test_a_reply_that_is_only_a_fence_releases_nothing():
    released, guard = _stream(ReplyPolicy(), ["<player", "_sa"])

    assert released == ""
    assert not guard.violation


def test_blocked_term_matches_whole_words_only():
    policy = ReplyPolicy(blocked_terms=["AI"])

    assert policy.first_violation("I said it again and again.") is None
    assert policy.first_violation("Fetch the AI, servant.") == len("Fetch the ")


def test_persona_leak_is_detected():
    persona = (
        "You are Count Valerian, the last lord of the castle above Hollowmere, and you never break character."
    )
    policy = ReplyPolicy(persona=persona)

    assert (
        policy.first_violation("My orders say: the last lord of the castle above Hollowmere, and you never")
        is not None
    )
    assert policy.first_violation("I am the last lord here.") is None


def test_text_is_held_back_only_by_the_window():
    guard = StreamGuard(ReplyPolicy(), max_chars=1000)

    released = guard.feed("a" * 100)

    assert len(released) == 100 - HOLD_BACK_CHARS


def test_length_cap_ends_at_a_sentence():
    released, guard = _stream(
        ReplyPolicy(), ["One sentence here. ", "Another one that goes on and on"], max_chars=30
    )

    assert released == "One sentence here."
    assert guard.stopped
