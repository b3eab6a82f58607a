"""The model pool: who can answer, at what price, and how to call them.

A pool file (TOML) lists models. `provider = "replay"` answers from recorded outputs
(`ReplayChatModel`, offline, no keys); `provider = "openai"` calls any OpenAI-compatible
endpoint through `ChatOpenAI`.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import os
import re
import tomllib
from collections.abc import AsyncIterator, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emafusion.stores.cost import Prices, Usage, cost_usd, estimate_usage
from emafusion.stores.recordings import Outcome, Record, RecordSet, normalize_query
from emafusion.stores.recordings.utf8 import NotUTF8Error, decode_utf8

COST_RECORDED = "recorded"
COST_ESTIMATED = "list_price_x_estimated_tokens"
COST_REPORTED_TOKENS = "list_price_x_reported_tokens"


class PoolError(ValueError):
    """A pool file or pool use that cannot work; the message names the field and the fix."""


class ModelUnavailableError(RuntimeError):
    """The model cannot answer this query (not wrong: unavailable)."""


class NoRecordingError(ModelUnavailableError):
    def __init__(self, model: str, record_id: str | None, query: str | None) -> None:
        self.model = model
        self.record_id = record_id
        where = f"record {record_id!r}" if record_id else f"query {_shorten(query or '')!r}"
        super().__init__(f"replay model {model!r} has no recording for {where}")


def _shorten(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


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


# --- replay -----------------------------------------------------------------------------


def recorded_call_cost(prices: Prices, query: str, outcome: Outcome) -> tuple[Usage, float, str]:
    """(usage, USD, how the USD was computed) of replaying one recorded outcome."""
    if outcome.input_tokens is not None and outcome.output_tokens is not None:
        usage = Usage(outcome.input_tokens, outcome.output_tokens, estimated=False)
    else:
        usage = estimate_usage(query, outcome.response or "")
    cost = cost_usd(prices, usage, outcome.cost_usd)
    if outcome.cost_usd is not None:
        source = COST_RECORDED
    else:
        source = COST_ESTIMATED if usage.estimated else COST_REPORTED_TOKENS
    return usage, cost, source


class ReplayStore:
    """Look-up of recorded outputs by record id or by normalized query text."""

    def __init__(self, records: RecordSet) -> None:
        self.records = records
        self._by_text: dict[str, str] = {}
        for record in records.records:
            self._by_text.setdefault(normalize_query(record.query), record.id)

    def find(self, record_id: str | None, query: str | None) -> Record | None:
        if record_id:
            return self.records.get(record_id)
        if query is not None:
            found = self._by_text.get(normalize_query(query))
            return self.records.get(found) if found else None
        return None


RECORD_ID_KEY = "record_id"


def _request_target(
    messages: Sequence[BaseMessage], kwargs: dict[str, Any]
) -> tuple[str | None, str]:
    """(record id, query text) of a request: the id from a kwarg or message metadata."""
    human = [m for m in messages if isinstance(m, HumanMessage)]
    last = human[-1] if human else messages[-1]
    record_id = kwargs.get(RECORD_ID_KEY) or last.additional_kwargs.get(RECORD_ID_KEY)
    return (str(record_id) if record_id else None), last.text


_CHUNK = re.compile(r"\S+\s*|\s+")


class ReplayChatModel(BaseChatModel):
    """A chat model that answers with a recorded output of `model_name`.

    Pass the record id as `additional_kwargs={"record_id": ...}` on the human message (or
    as an invoke kwarg); without one, the query text is looked up. A query with no
    recording raises `NoRecordingError`: the model is unavailable, not wrong.
    """

    model_name: str
    prices: Prices
    store: ReplayStore
    chunk_words: int = 4

    @property
    def _llm_type(self) -> str:
        return "replay"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "recordings": self.store.records.name}

    def _answer(self, messages: Sequence[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        record_id, query = _request_target(messages, kwargs)
        record = self.store.find(record_id, query)
        outcome = record.outcomes.get(self.model_name) if record else None
        if record is None or outcome is None:
            raise NoRecordingError(self.model_name, record_id, query)
        text = outcome.response or ""
        usage, cost, source = recorded_call_cost(self.prices, record.query, outcome)
        return AIMessage(
            content=text,
            usage_metadata=UsageMetadata(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
            ),
            response_metadata={
                "model_name": self.model_name,
                "model_provider": "replay",
                "record_id": record.id,
                "cost_usd": cost,
                "cost_source": source,
                "usage_estimated": usage.estimated,
                "response_recorded": outcome.response is not None,
            },
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages, kwargs))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, None, **kwargs)

    def _chunks(self, message: AIMessage) -> Iterator[ChatGenerationChunk]:
        pieces = _CHUNK.findall(message.text)
        groups = [
            "".join(pieces[i : i + self.chunk_words])
            for i in range(0, len(pieces), self.chunk_words)
        ] or [""]
        for i, piece in enumerate(groups):
            last = i == len(groups) - 1
            # Usage and cost ride on the final chunk, so a summed stream equals invoke.
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=piece,
                    usage_metadata=message.usage_metadata if last else None,
                    response_metadata=message.response_metadata if last else {},
                    chunk_position="last" if last else None,
                )
            )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._answer(messages, kwargs)):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._answer(messages, kwargs)):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
            await asyncio.sleep(0)


# --- construction -----------------------------------------------------------------------


def build_chat_model(spec: ModelSpec, store: ReplayStore | None = None) -> BaseChatModel:
    """The LangChain chat model for one pool entry. API keys are read, never logged."""
    if spec.provider == "replay":
        if store is None:
            raise PoolError(
                f"model {spec.name!r} is a replay model but no recordings were loaded. "
                f"Fix: pass --dataset or --recordings."
            )
        return ReplayChatModel(model_name=spec.name, prices=spec.prices, store=store)
    from langchain_openai import ChatOpenAI

    api_key = "not-needed"  # local OpenAI-compatible servers often take any key
    if spec.api_key_env:
        value = os.environ.get(spec.api_key_env)
        if not value:
            raise PoolError(
                f"model {spec.name!r}: environment variable {spec.api_key_env} is not set. "
                f"Fix: export it, or remove api_key_env for a server that needs no key."
            )
        api_key = value
    return ChatOpenAI(
        model=spec.provider_model_id,
        base_url=spec.base_url,
        api_key=api_key,  # type: ignore[arg-type]
        max_tokens=spec.max_tokens,  # type: ignore[call-arg]
        timeout=spec.timeout_s,
        stream_usage=True,
        # Retries belong to the graph's RetryPolicy, which also records them.
        max_retries=0,
    )


def call_cost(spec: ModelSpec, message: BaseMessage, prompt: str = "") -> tuple[float, str]:
    """(USD, how it was computed) of one answered call, for any provider."""
    meta = getattr(message, "response_metadata", {}) or {}
    if "cost_usd" in meta:
        return float(meta["cost_usd"]), str(meta.get("cost_source", COST_RECORDED))
    usage_meta = getattr(message, "usage_metadata", None)
    if usage_meta:
        usage = Usage(usage_meta["input_tokens"], usage_meta["output_tokens"])
        return cost_usd(spec.prices, usage), COST_REPORTED_TOKENS
    return cost_usd(spec.prices, estimate_usage(prompt, message.text)), COST_ESTIMATED
