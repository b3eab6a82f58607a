"""A conversation as the router sees it: one query string, and who it is for `sticky`.

The router routes and answers one query. A conversation becomes one as follows:

- a single user message: its text, as is (so a recorded query replays as recorded);
- anything longer (a system prompt, earlier turns): a transcript, one block per message,
  `System:`, `User:` or `Assistant:` and the text, blocks separated by a blank line, ending
  with the last user turn. Routing reads the whole transcript (the last user turn among
  it) and the chosen model answers it as its next assistant turn.

A conversation's identity (for `sticky`, keeping a thread on one model): the client's
`conversation_id` when it sends one; else its opening, i.e. the system/developer messages
before the first user message and that first user message, which every later request of
the thread repeats. Either is scoped by the API key that sent it, hashed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


class ConversationError(ValueError):
    """A conversation the router cannot answer (says why)."""


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def conversation_query(turns: Sequence[tuple[str, str]]) -> str:
    """The query for `(role, text)` turns (see the module's docstring)."""
    if not turns:
        raise ConversationError("messages: empty; send at least one user message")
    if turns[-1][0] != "user":
        raise ConversationError(
            f"messages: the last message is {_article(turns[-1][0])} {turns[-1][0]} message; the "
            f"router answers a user turn. Fix: end the conversation with the user's message."
        )
    if not turns[-1][1].strip():
        raise ConversationError("messages: the last user message has no text")
    if len(turns) == 1:
        return turns[0][1]
    return "\n\n".join(f"{ROLE_LABELS[role]}: {text}" for role, text in turns)


def conversation_key(
    turns: Sequence[tuple[str, str]], conversation_id: str | None, tenant: str
) -> str:
    """A stable, opaque id of the conversation these turns belong to."""
    if conversation_id is not None:
        material = ["id", tenant, conversation_id]
    else:
        opening: list[tuple[str, str]] = []
        for role, text in turns:
            opening.append((role, text))
            if role == "user":
                break
        material = ["opening", tenant, *(f"{r}\x1f{t}" for r, t in opening)]
    return hashlib.sha256(json.dumps(material).encode("utf-8")).hexdigest()[:32]


class StickyBindings:
    """Which model answered a conversation: bounded (least recently used out), expiring."""

    def __init__(self, capacity: int = 10_000, ttl_s: float = 3600.0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._bound: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            found = self._bound.get(key)
            if found is None:
                return None
            if now - found[1] > self.ttl_s:
                del self._bound[key]
                return None
            self._bound[key] = (found[0], now)
            self._bound.move_to_end(key)
            return found[0]

    def bind(self, key: str, model: str) -> None:
        with self._lock:
            self._bound[key] = (model, time.monotonic())
            self._bound.move_to_end(key)
            while len(self._bound) > self.capacity:
                self._bound.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._bound)
