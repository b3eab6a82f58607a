"""Chat models for pool entries: the offline replay of recordings and OpenAI-compatible
endpoints (`ChatOpenAI`), and the cost of an answered call.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from emafusion.stores.cost import (
    COST_ESTIMATED,
    COST_RECORDED,
    COST_REPORTED_TOKENS,
    Prices,
    Usage,
    cost_usd,
    estimate_usage,
)
from emafusion.stores.pool import ModelSpec, PoolError
from emafusion.stores.recordings import Outcome, Record, RecordSet, normalize_query
from emafusion.stores.redaction import register_secret


def _shorten(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


class ModelUnavailableError(RuntimeError):
    """The model cannot answer this query (not wrong: unavailable)."""


class NoRecordingError(ModelUnavailableError):
    def __init__(self, model: str, record_id: str | None, query: str | None) -> None:
        self.model = model
        self.record_id = record_id
        where = f"record {record_id!r}" if record_id else f"query {_shorten(query or '')!r}"
        super().__init__(f"replay model {model!r} has no recording for {where}")



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
                # A recording is a complete answer by construction.
                "finish_reason": "stop",
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
        register_secret(value)
        api_key = value
    return ChatOpenAI(
        model=spec.provider_model_id,
        base_url=spec.base_url,
        api_key=api_key,  # type: ignore[arg-type]
        max_tokens=spec.max_tokens,  # type: ignore[call-arg]
        timeout=spec.timeout_s,
        stream_usage=True,
        # Retries are the router's (by error type, honouring Retry-After), which also
        # records them; the SDK's own would hide them.
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
