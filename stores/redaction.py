"""One redactor for every provider error text before it reaches a trace, a log or a reply.

Provider error bodies may echo request headers or the credential itself. Known key values
(registered when a pool's key is read from the environment) and anything shaped like a
credential (bearer tokens, `sk-...` keys, `api_key=...` pairs) are replaced by a marker.
"""

from __future__ import annotations

import re
import threading

REDACTED = "[redacted]"
# Keys shorter than this are too likely to occur in ordinary text to be replaced verbatim.
_MIN_SECRET_LENGTH = 8
_PATTERNS = (
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    re.compile(
        r"(?i)\b(api[_-]?key|authorization|x-api-key|access[_-]?token|secret)"
        r"(\"?\s*[:=]\s*\"?)[^\s\"',;}]{4,}"
    ),
)

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Make `value` (an API key read from the environment) redacted wherever it appears."""
    if len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PATTERNS[1].sub(REDACTED, text)
    return _PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
