"""`ChatEmaFusion`: the router as a LangChain chat model, a drop-in for `ChatOpenAI`.

    model = ChatEmaFusion(source=RouterDirectory(DeploymentSettings(router_dir=...)))
    reply = await model.ainvoke("Which gas do plants absorb?")
    reply.response_metadata["emafusion"]   # path, confidences, cost, run id
    reply.usage_metadata                   # tokens summed over every model call

Messages become one query as the server makes them (`emafusion.serve.conversation`).
Streaming yields the accepted answer in chunks once the router has judged it (a cascade
cannot take back tokens of an answer it escalates past), the last chunk carrying usage
and the routing metadata. Sync calls run the router on a private event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph.state import CompiledStateGraph
from pydantic import ConfigDict, Field, PrivateAttr

from emafusion.graph.context import Context
from emafusion.graph.router import make_graph
from emafusion.nodes.resources import ResourceSource, RouterResources, StaticResources
from emafusion.serve.conversation import conversation_query
from emafusion.serve.runner import RoutedReply, route
from emafusion.stores.presets import DEFAULT_PRESET


class RouterUnanswered(RuntimeError):
    """No model answered (every one failed, or none fit the budget); lists the failures."""

    def __init__(self, reply: RoutedReply) -> None:
        self.reply = reply
        failures = "; ".join(f"{f['model']}: {f['error']}" for f in reply.failures)
        super().__init__(f"the router returned no answer ({reply.reason}). {failures}".strip())


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ChatMessage) and message.role in ("system", "user", "assistant"):
        return message.role
    raise ValueError(
        f"ChatEmaFusion takes system, human and AI messages; got {type(message).__name__} "
        f"(tool calls are not routed)"
    )


def messages_query(messages: Sequence[BaseMessage]) -> str:
    return conversation_query([(_role(m), m.text) for m in messages])


def _usage(reply: RoutedReply) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=reply.prompt_tokens,
        output_tokens=reply.completion_tokens,
        total_tokens=reply.total_tokens,
    )


def _metadata(reply: RoutedReply) -> dict[str, Any]:
    return {
        "model_name": reply.model,
        "model_provider": "emafusion",
        "finish_reason": "stop",
        "emafusion": reply.info(),
    }


class ChatEmaFusion(BaseChatModel):
    """The emafusion router as a chat model. `source`: the deployment's `RouterDirectory`,
    or `RouterResources` built by the caller."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    source: Any = Field(description="ResourceSource or RouterResources")
    preset: str = DEFAULT_PRESET
    max_cost_usd: float | None = Field(default=None, gt=0.0)
    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    models: list[str] | None = None
    record_outcomes: bool | None = None
    chunk_words: int = Field(default=4, ge=1)

    _graph: CompiledStateGraph | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "emafusion"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"preset": self.preset, "models": self.models}

    def _source(self) -> ResourceSource:
        if isinstance(self.source, RouterResources):
            return StaticResources(self.source)
        source: ResourceSource = self.source
        return source

    def _router(self) -> CompiledStateGraph:
        if self._graph is None:
            self._graph = make_graph(self._source())
        return self._graph

    def _context(self) -> Context:
        fields: dict[str, Any] = {"preset": self.preset}
        if self.max_cost_usd is not None:
            fields["budget_usd"] = self.max_cost_usd
        if self.min_confidence is not None:
            fields["escalation_threshold"] = self.min_confidence
        if self.models is not None:
            fields["models"] = tuple(self.models)
        if self.record_outcomes is not None:
            fields["record_outcomes"] = self.record_outcomes
        return Context(**fields)

    async def aroute(self, messages: Sequence[BaseMessage]) -> RoutedReply:
        """The routed reply (with every routing detail) for `messages`."""
        reply = await route(self._router(), messages_query(messages), self._context())
        if not reply.answered:
            raise RouterUnanswered(reply)
        return reply

    def _sync(self, messages: Sequence[BaseMessage]) -> RoutedReply:
        # A private loop on a worker thread: safe whether or not the caller runs a loop.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.aroute(messages)).result()

    def _result(self, reply: RoutedReply) -> ChatResult:
        message = AIMessage(
            content=reply.answer or "",
            id=f"run-{reply.run_id}",
            usage_metadata=_usage(reply),
            response_metadata=_metadata(reply),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunks(self, reply: RoutedReply) -> Iterator[ChatGenerationChunk]:
        pieces = reply.chunks(self.chunk_words)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content=piece,
                    id=f"run-{reply.run_id}",
                    usage_metadata=_usage(reply) if last else None,
                    response_metadata=_metadata(reply) if last else {},
                    chunk_position="last" if last else None,
                )
            )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result(self._sync(messages))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result(await self.aroute(messages))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._sync(messages)):
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
        for chunk in self._chunks(await self.aroute(messages)):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
