"""The request and reply bodies of the OpenAI-compatible API, as pydantic models.

Requests are strict: an unknown field is refused (naming it), so a misspelt control is
never silently ignored, and a deployment setting (a path, a pool, a key) gets a clear
"never a request's" error. OpenAI's sampling fields are accepted so that stock clients
work, and documented as not applied: each pool model runs with its pool settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from emafusion.graph.context import DEPLOYMENT_SETTINGS


def _refuse_deployment_settings(data: Any) -> Any:
    if isinstance(data, dict):
        named = sorted(k for k in data if k in DEPLOYMENT_SETTINGS)
        if named:
            raise ValueError(
                f"{', '.join(named)}: deployment settings (files, directories, pools, keys), "
                f"never a request's. Fix: drop them; the server's operator configures them."
            )
    return data


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class TextPart(Strict):
    """A content part; only text is routed (no images, audio or files)."""

    type: Literal["text"]
    text: str


Content = str | list[TextPart]


class MessageBase(Strict):
    name: str | None = Field(default=None, max_length=256)

    @property
    def text(self) -> str:
        content: Content | None = getattr(self, "content", None)
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(part.text for part in content)


class SystemMessage(MessageBase):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(MessageBase):
    role: Literal["user"]
    content: Content


class AssistantMessage(MessageBase):
    role: Literal["assistant"]
    content: Content | None = None
    # What an SDK echoes back from an earlier reply; accepted when empty (no tool calls).
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    function_call: None = None
    audio: None = None
    annotations: list[dict[str, Any]] | None = None


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text"]


class ChatCompletionRequest(Strict):
    """POST /v1/chat/completions: OpenAI's body plus the router's controls."""

    model: str = Field(
        min_length=1,
        max_length=200,
        description="'emafusion' (the default preset), 'emafusion-<preset>', or a pool model "
        "(routed to that model alone); GET /v1/models lists them.",
        examples=["emafusion"],
    )
    messages: list[ChatMessage] = Field(
        min_length=1, examples=[[{"role": "user", "content": "Which gas do plants absorb?"}]]
    )
    stream: bool = False
    stream_options: StreamOptions | None = None

    # --- OpenAI's sampling and bookkeeping fields: accepted, not applied ---------------------
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=1, description="Only one choice.")
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=0)
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = Field(default=None, max_length=64)
    parallel_tool_calls: bool | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    tool_choice: Literal["none", "auto"] | None = None
    response_format: ResponseFormat | None = None

    # --- the router's controls (validated; never paths) --------------------------------------
    max_cost_usd: float | None = Field(
        default=None, gt=0.0, description="Most USD this request may spend (models + judges)."
    )
    min_confidence: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Return once an answer's confidence is this."
    )
    models: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Only these pool models may answer.",
    )
    sticky: bool = Field(
        default=False,
        description="Keep this conversation on the model that answered its earlier turns.",
    )
    conversation_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Names the conversation for `sticky` (default: its opening turns).",
    )

    _deployment = model_validator(mode="before")(_refuse_deployment_settings)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not available through the router")
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists a model twice")
        return value


class FeedbackRequest(Strict):
    """POST /v1/feedback: a score for the answer a reply's `emafusion.run_id` names."""

    run_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    score: float = Field(ge=0.0, le=1.0, description="1 = right, 0 = wrong.")
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The model the score is for (default: the one whose answer was returned).",
    )

    _deployment = model_validator(mode="before")(_refuse_deployment_settings)


class FeedbackReply(BaseModel):
    object: Literal["feedback"] = "feedback"
    run_id: str
    query_id: str
    model: str
    score: float
    durable: bool


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    emafusion: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    models: int
    presets: list[str]
