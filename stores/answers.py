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
    # LaTeX's \boxed{...}, the usual way mathematical writing marks its final answer.
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\(?([A-J])\)?\s*\}?\s*\}"),
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


# --- answer keys: which answers say the same thing ---------------------------------------

_FINAL = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WORDS = re.compile(r"[^\W_]+", re.UNICODE)
# Answers longer than this are free-form: equal only by meaning (see `semantic_keys`).
SHORT_ANSWER_WORDS = 12


def _final_part(text: str) -> str:
    found = _FINAL.findall(text)
    if found:
        return found[-1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _number_key(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    value = float(numbers[-1].replace(",", ""))
    return f"number:{value:.12g}"


def answer_key(query: str, answer: str | None, n_options: int | None = None) -> str | None:
    """A key that equal answers share, or None when the answer commits to nothing
    comparable: the option letter of a multiple-choice query; else the final number, or
    the normalized final short text. Long free-form answers get None here and are grouped
    by meaning instead (`semantic_keys`)."""
    if not answer or not answer.strip():
        return None
    options = option_count(query) if n_options is None else n_options
    if options:
        letter = extract_choice(answer, options)
        return f"option:{letter}" if letter else None
    final = _final_part(answer)
    words = _WORDS.findall(final.lower())
    if not words:
        return None
    number = _number_key(final) if len(words) <= SHORT_ANSWER_WORDS else None
    if number is not None:
        return number
    if len(words) <= SHORT_ANSWER_WORDS:
        return "text:" + " ".join(words)
    return None


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors


def semantic_keys(
    vectors: list[list[float]] | None, keys: list[str | None], threshold: float = 0.9
) -> list[str | None]:
    """Keys for free-form answers (key None, a vector given): an answer joins the first
    earlier one whose unit embedding is at least `threshold` similar, else starts its own
    group. Answers that already have a key keep it."""
    if vectors is None:
        return list(keys)
    out = list(keys)
    anchors: list[tuple[int, list[float]]] = []
    for i, (key, vector) in enumerate(zip(keys, vectors, strict=True)):
        if key is not None or not vector:
            continue
        match = next((j for j, v in anchors if _cosine(v, vector) >= threshold), None)
        if match is None:
            anchors.append((i, vector))
            match = i
        out[i] = f"semantic:{match}"
    return out
