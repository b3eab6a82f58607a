"""Reading a final multiple-choice answer out of free model text.

Shared by the recordings loader (to infer RouterBench's reference letter) and by the
judges (did the response commit to a parsable answer?).
"""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJ"

# Ordered from most to least explicit; the first pattern that matches wins, and within
# a pattern the last match wins, because chain-of-thought text often mentions several
# options before it concludes.
_PATTERNS = (
    re.compile(r"answer is:?\s*\(?\*{0,2}([A-J])\b\)?", re.IGNORECASE),
    re.compile(r"answer:\s*\(?\*{0,2}([A-J])\b\)?", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?[.):]?\s*$", re.MULTILINE),
    re.compile(r"^\s*\(?([A-J])[.)]\s", re.MULTILINE),
)


_OPTION_LINE = re.compile(r"^\s*([A-J])[.)]\s", re.MULTILINE)


def option_count(query: str) -> int:
    """Number of lettered options of the query's final question (0: not multiple choice).

    Only the last blank-line-separated block counts: worked examples before it carry their
    own options.
    """
    question = query.rsplit("\n\n", 1)[-1]
    count = 0
    for expected, found in zip(LETTERS, _OPTION_LINE.findall(question), strict=False):
        if expected != found:
            break
        count += 1
    return count if count >= 2 else 0


def extract_choice(text: str | None, n_options: int = len(LETTERS)) -> str | None:
    """The chosen option letter, or None when the text commits to no valid option."""
    if not text:
        return None
    valid = LETTERS[: max(1, min(n_options, len(LETTERS)))]
    for pattern in _PATTERNS:
        found = [m.upper() for m in pattern.findall(text)]
        found = [letter for letter in found if letter in valid]
        if found:
            return found[-1]
    return None
