"""The one shape every recording loads into: `Record`, its `Outcome`s, and a `RecordSet`.

Both published sets (MMLU-Pro zips, RouterBench CSVs) and a user's own logs (JSON Lines,
one `Record` per line) load into this shape, so everything downstream is written once.
The fixed split rule and the text a query is routed (embedded) by live here too, because
they are properties of a record that every dataset shares.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from emafusion.stores.recordings.download import DataError

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")


class RecordingError(DataError):
    """A recording that cannot be read; the message names the file, line or field, and fix."""


class Outcome(BaseModel):
    """How one model did on one query."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    response: str | None = None
    score: float = Field(ge=0.0, le=1.0)
    cost_usd: float | None = Field(default=None, ge=0.0)
    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)

    @field_validator("score", "cost_usd")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class Record(BaseModel):
    """One query with every recorded model's outcome on it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    category: str
    query: str
    reference: str | None = None
    outcomes: dict[str, Outcome]

    @property
    def split(self) -> Split:
        return split_of(self.id)


def first_error(exc: ValidationError) -> str:
    """The first validation problem as "field 'a.b': message", plus how many more."""
    errors = exc.errors()
    err = errors[0]
    location = ".".join(str(part) for part in err["loc"]) or "(line)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"field {location!r}: {err['msg']}{more}"


def split_of(record_id: str) -> Split:
    """The project's fixed split rule, shared by every dataset and anyone re-checking."""
    h = int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % 10
    if h in (0, 1):
        return "test"
    if h == 2:
        return "validation"
    return "train"


def normalize_query(text: str) -> str:
    """Whitespace-insensitive form of a query, for look-ups by text."""
    return " ".join(text.split())


_BLOCK_SEPARATOR = "\n\n"
# A worked example carries its own answer: "Answer:" followed by text on the next line.
_SOLVED_EXAMPLE = re.compile(r"Answer:\s*\n\s*\S")


def routing_text(query: str) -> str:
    """The part of a query that says what is asked, for embedding.

    Few-shot prompts open with worked examples (RouterBench's Winogrande prompts all share
    the same ones); embedded as is, every query would look alike. When earlier blocks carry
    solved examples, routing embeds only the final block, the question itself. The model
    still sees the whole prompt.
    """
    head, sep, last = query.rpartition(_BLOCK_SEPARATOR)
    if sep and last.strip() and _SOLVED_EXAMPLE.search(head):
        return last.strip()
    return query


def embedding_text(record: Record) -> str:
    """The text a record is embedded by; the same rule as for live queries."""
    return routing_text(record.query)


@dataclass
class RecordSet:
    """The records of one dataset, with where they came from."""

    name: str
    records: list[Record]
    source: str
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    # Per-model figures over the raw published rows, before merging (see load_routerbench).
    published_row_cost_per_1k: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_id = {r.id: r for r in self.records}
        if len(self._by_id) != len(self.records):
            dupes = [i for i, n in Counter(r.id for r in self.records).items() if n > 1]
            raise RecordingError(
                f"{self.source}: duplicate record ids {dupes[:5]}. Fix: give every query "
                f"a unique id (merge the outcomes of one query into one line)."
            )

    def __len__(self) -> int:
        return len(self.records)

    def get(self, record_id: str) -> Record | None:
        return self._by_id.get(record_id)

    @property
    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for record in self.records:
            for model in record.outcomes:
                seen.setdefault(model, None)
        return sorted(seen)

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.records})

    def split(self, *names: Split) -> list[Record]:
        for name in names:
            if name not in SPLITS:
                raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split in names]

    def split_sizes(self) -> dict[Split, int]:
        counts = Counter(r.split for r in self.records)
        return {name: counts.get(name, 0) for name in SPLITS}
