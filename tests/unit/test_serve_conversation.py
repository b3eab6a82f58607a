"""How a conversation becomes one query, and who it is for sticky routing."""

from __future__ import annotations

import time

import pytest

from emafusion.serve.conversation import (
    ConversationError,
    StickyBindings,
    conversation_key,
    conversation_query,
)


def test_one_user_message_is_the_query_as_is() -> None:
    assert conversation_query([("user", "  What is 2+2?\n")]) == "  What is 2+2?\n"


def test_a_longer_conversation_is_a_transcript_ending_with_the_user() -> None:
    turns = [
        ("system", "Be brief."),
        ("developer", "Letters only."),
        ("user", "Q1"),
        ("assistant", "A1"),
        ("user", "Q2"),
    ]
    assert conversation_query(turns) == (
        "System: Be brief.\n\nSystem: Letters only.\n\nUser: Q1\n\nAssistant: A1\n\nUser: Q2"
    )
    with pytest.raises(ConversationError, match="last message is an assistant"):
        conversation_query(turns[:-1])
    with pytest.raises(ConversationError, match="no text"):
        conversation_query([("user", "  ")])


def test_a_conversation_keeps_its_key_across_turns_and_tenants_apart() -> None:
    opening = [("system", "S"), ("user", "Q1")]
    later = [*opening, ("assistant", "A1"), ("user", "Q2")]
    assert conversation_key(opening, None, "t1") == conversation_key(later, None, "t1")
    assert conversation_key(opening, None, "t1") != conversation_key(opening, None, "t2")
    assert conversation_key([("user", "Q1")], None, "t1") != conversation_key(opening, None, "t1")
    named = conversation_key(opening, "c-1", "t1")
    assert named == conversation_key([("user", "other")], "c-1", "t1")
    assert named != conversation_key(opening, "c-2", "t1")


def test_bindings_are_bounded_and_expire() -> None:
    bindings = StickyBindings(capacity=2, ttl_s=0.05)
    bindings.bind("a", "tiny")
    bindings.bind("b", "mid")
    assert bindings.get("a") == "tiny"  # a is now the most recent
    bindings.bind("c", "large")
    assert len(bindings) == 2 and bindings.get("b") is None
    time.sleep(0.08)
    assert bindings.get("a") is None and bindings.get("c") is None
