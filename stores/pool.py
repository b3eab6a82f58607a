"""The model pool: who can answer and at what price (a validated TOML file).

`provider = "replay"` answers from recorded outputs, `provider = "openai"` calls any
OpenAI-compatible endpoint; `emafusion.stores.providers` builds the chat models.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emafusion.stores.cost import Prices
from emafusion.stores.recordings import RecordSet
from emafusion.stores.recordings.utf8 import NotUTF8Error, decode_utf8


class PoolError(ValueError):
    """A pool file or pool use that cannot work; the message names the field and the fix."""


class ModelSpec(BaseModel):
    """One model of the pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    provider: Literal["replay", "openai"]
    input_per_1m: float = Field(ge=0.0, description="USD per 1M input tokens")
    output_per_1m: float = Field(ge=0.0, description="USD per 1M output tokens")
    base_url: str | None = None
    api_key_env: str | None = None
    model: str | None = Field(default=None, description="provider's model id; default: name")
    max_tokens: int | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("input_per_1m", "output_per_1m")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of USD per 1M tokens")
        return value

    @model_validator(mode="after")
    def _provider_fields(self) -> ModelSpec:
        if self.provider == "openai" and not self.base_url:
            raise ValueError(
                "provider 'openai' needs base_url (e.g. 'http://127.0.0.1:8000/v1' or "
                "'https://api.openai.com/v1')"
            )
        return self

    @property
    def prices(self) -> Prices:
        return Prices(self.input_per_1m, self.output_per_1m)

    @property
    def provider_model_id(self) -> str:
        return self.model or self.name


def _close_names(name: str, known: Sequence[str]) -> list[str]:
    """Names a typo most likely meant: shared prefixes first, then fuzzy matches."""
    key = name.lower()
    prefix = [k for k in known if k.lower().startswith(key) or key.startswith(k.lower())]
    fuzzy = difflib.get_close_matches(name, list(known), n=3)
    return list(dict.fromkeys(prefix + fuzzy))[:3]


class Pool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(default=None, description="recordings replay models answer from")
    models: list[ModelSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Pool:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        return self

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        close = _close_names(name, self.names)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise PoolError(
            f"unknown model {name!r}: not in the pool ({', '.join(self.names)}).{hint} "
            f"Fix: add it to the pool file or use one of those names."
        )

    def by_price(self) -> list[ModelSpec]:
        """Cheapest first by list price of a typical call (1 input : 1 output token)."""
        return sorted(self.models, key=lambda m: (m.input_per_1m + m.output_per_1m, m.name))

    def check_recordings(self, records: RecordSet) -> None:
        """Every replay model must have recordings in `records`."""
        available = set(records.models)
        for spec in self.models:
            if spec.provider == "replay" and spec.name not in available:
                close = _close_names(spec.name, sorted(available))
                hint = f" Close names: {', '.join(close)}." if close else ""
                raise PoolError(
                    f"pool model {spec.name!r} (provider 'replay') has no recordings in "
                    f"{records.name!r} ({records.source}).{hint} Fix: correct the name, "
                    f"remove the model, or give it provider 'openai'."
                )


def default_pool_path(dataset: str) -> Path:
    ref = resources.files("emafusion.stores") / "pools" / f"{dataset}.toml"
    path = Path(str(ref))
    if not path.is_file():
        raise PoolError(
            f"no default pool for dataset {dataset!r}. Fix: pass --pool FILE "
            f"(a TOML pool file; see the README)."
        )
    return path


def load_pool(path: Path | str) -> Pool:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise PoolError(f"{path}: no such pool file. Fix: pass an existing --pool FILE.") from exc
    except OSError as exc:  # a directory, no permission, a disk error
        raise PoolError(
            f"{path}: cannot be read ({exc.strerror or exc}). Fix: pass a readable --pool FILE."
        ) from exc
    try:
        raw = tomllib.loads(decode_utf8(data))  # a leading byte-order mark is accepted
    except NotUTF8Error as exc:
        raise PoolError(f"{path}, {exc}.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PoolError(f"{path}: not valid TOML ({exc}). Fix: correct the syntax.") from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise PoolError(
            f"{path}: arrays or tables nested too deeply to read. Fix: a pool file is a "
            f"list of flat [[models]] tables (see the README)."
        ) from exc
    try:
        return Pool.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        field = ".".join(str(p) for p in loc) or "(the pool as a whole)"
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            models = raw.get("models") or []
            entry = models[loc[1]] if loc[1] < len(models) else {}
            name = entry.get("name", "?") if isinstance(entry, dict) else "?"
            inside = "".join(f".{p}" for p in loc[2:])
            field = f"models[{loc[1]}] ({name!r}){inside}"
        raise PoolError(
            f"{path}: field {field}: {err['msg']}. Fix: correct that entry of the pool file."
        ) from exc


def load_default_pool(dataset: str) -> Pool:
    return load_pool(default_pool_path(dataset))
