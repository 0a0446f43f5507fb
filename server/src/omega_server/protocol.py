"""OpenAI-style wire models: chat-completion requests, responses, stream chunks and errors.

Only the shapes live here (and ``choice_logprobs``, the wire form of the engine's log-probability
entries); turning a request into engine work is `chat_request`'s and `serving`'s job. Fields that
the API has but this server cannot honour are refused with a clear message, never silently ignored:
those declared here in `chat_request.check_supported`, the others in `chat_request.UNHONOURED`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from omega_server.engine.types import TokenLogprob


class _Wire(BaseModel):
    """Base of the request models: unknown fields are ignored, as most OpenAI servers do."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class TextPart(_Wire):
    """A text content part: `{"type": "text", "text": "..."}`."""

    type: Literal["text"]
    text: str


class ImageURL(_Wire):
    """The `image_url` object: a `data:` URL (base64 png/jpeg/webp) or an http(s) URL."""

    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLPart(_Wire):
    """An image content part: `{"type": "image_url", "image_url": {"url": "..."}}`."""

    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImageURLPart, Field(discriminator="type")]


class ChatMessage(_Wire):
    """One chat message. `developer` is treated as `system`; images are allowed in user messages."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Wire):
    """`stream_options`: `include_usage` adds a final chunk with token usage."""

    include_usage: bool = False


class ChatCompletionRequest(_Wire):
    """`POST /v1/chat/completions` body."""

    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=1, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None  # token id (a string, as OpenAI's) -> bias in [-100, 100]
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # vLLM's extra sampling fields (unset: the model's generation_config, then the neutral value)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    stop_token_ids: list[int] | None = None
    # Accepted only at their neutral values (checked in chat_request.check_supported).
    tools: list[Any] | None = None
    tool_choice: Any | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


class Usage(BaseModel):
    """Token counts of one completion."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The generated message of a non-streaming choice."""

    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    """One of the likeliest tokens at a position: its text, log-probability and UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobs(TopLogprob):
    """The chosen token at a position, with the likeliest tokens there (``top_logprobs`` of them)."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """A choice's (or a chunk's) ``logprobs``: one entry per generated token."""

    content: list[TokenLogprobs] | None
    refusal: list[TokenLogprobs] | None = None


def choice_logprobs(entries: list[TokenLogprob]) -> ChoiceLogprobs:
    """The wire form of the engine's log-probability entries (text, log-probability, UTF-8 bytes)."""
    return ChoiceLogprobs(
        content=[
            TokenLogprobs(
                token=e.token,
                logprob=e.logprob,
                bytes=list(e.token.encode("utf-8", "surrogatepass")),
                top_logprobs=[
                    TopLogprob(token=text, logprob=v, bytes=list(text.encode("utf-8", "surrogatepass")))
                    for _, text, v in e.top
                ],
            )
            for e in entries
        ]
    )


class Choice(BaseModel):
    """One choice of a non-streaming response."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    """Non-streaming response (`object: chat.completion`)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    """Incremental message content of a stream chunk: the role in the first chunk, then content."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One choice of a stream chunk."""

    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """Streaming response frame (`object: chat.completion.chunk`).

    Frames are written with ``exclude_unset``: a field is on the wire when it was given (``usage``
    only with ``stream_options.include_usage``; a delta's ``role`` only in the first chunk).
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """An entry of `GET /v1/models`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "omega-vlm"
    max_model_len: int | None = None


class ModelList(BaseModel):
    """`GET /v1/models` body."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    """The `error` object of an OpenAI error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorInfo


def completion_id() -> str:
    """A fresh OpenAI-style completion id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds, as OpenAI's `created`."""
    return int(time.time())
