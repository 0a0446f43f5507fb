"""A chat-completion body -> the engine's ``GenerationRequest``, refusing what this server cannot honour.

The request's validation, in order: ``parse_request`` refuses fields the server knows but cannot
honour (``UNHONOURED``) and reads the body into ``protocol``'s models (the shapes and bounds of the
OpenAI API); ``to_generation_request`` refuses, by name, features the server
does not have and requests over its limits (checked before any image is fetched), then builds the
engine's request: sampling parameters (unset ones from the model's ``generation_config``), the
``response_format`` grammar, and HF-format messages with their images decoded. What is left to the
engine is what only it can know: the prompt's length in tokens (``PromptTooLongError``), token ids
outside the vocabulary, a schema its grammar compiler refuses; its
own request check (``engine.inputs.check_request``, for callers that build engine requests
themselves) passes everything built here. Every refusal is an ``APIError`` naming the field at fault.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import ValidationError

from omega_server.engine.types import GenerationRequest, SamplingParams
from omega_server.errors import APIError, describe_validation_error
from omega_server.http_config import HttpConfig
from omega_server.protocol import ChatCompletionRequest, ChatMessage, ImageURLPart, TextPart

MAX_STOP_SEQUENCES = 16
MAX_LOGIT_BIAS = 1024
MAX_CHARS_PER_TOKEN = 32  # generous: real tokenizers average 3-5 characters per token

#: ``load_image(url, param, detail)``: the decoded image behind a request's image URL, within the
#: pixel budget of its ``detail``
ImageLoader = Callable[[str, str, str | None], Awaitable[Any]]

#: Request fields of OpenAI's API (and vLLM's extras) that change what is generated but that this
#: server cannot honour, with the values that mean "off": any other value is refused by name (400),
#: never served without it. Bookkeeping fields (``user``, ``metadata``, ``store``, ``service_tier``,
#: ``parallel_tool_calls``) and unknown fields are ignored.
UNHONOURED: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "best_of": (None, 1),
    "use_beam_search": (None, False),
    "length_penalty": (None, 1.0),
    "typical_p": (None, 1.0),
    "min_tokens": (None, 0),
    "prompt_logprobs": (None, 0),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "structured_outputs": (None,),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "ignore_eos": (None, False),
    "echo": (None, False),
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "truncate_prompt_tokens": (None,),
}


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """Parse a chat-completion body, whatever its Content-Type (curl -d sends form encoding).

    Malformed JSON and schema errors become `APIError(400)` with a one-line message and `param`.
    """
    if not raw.strip():
        raise APIError(400, "Request body is required (a JSON object).", code="invalid_value")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting bombs
        if isinstance(exc, RecursionError):
            detail = "nested too deeply"
        elif isinstance(exc, json.JSONDecodeError):
            detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        else:
            detail = str(exc)
        raise APIError(400, f"Malformed JSON body: {detail}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object.", code="invalid_value")
    for name, neutral in UNHONOURED.items():
        if name in data and not _is_neutral(data[name], neutral):
            raise APIError(400, f"{name} is not supported by this server (leave it out).", param=name)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        message, param = describe_validation_error(exc.errors())
        raise APIError(400, message, param=param, code="invalid_value") from None


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    """``value`` is one of ``neutral`` (True is not 1 here, nor 1 True)."""
    return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in neutral)


async def to_generation_request(
    req: ChatCompletionRequest,
    config: HttpConfig,
    load_image: ImageLoader,
    sampling_defaults: Mapping[str, float] | None = None,
) -> GenerationRequest:
    """Check a parsed request against this server and build the engine's request (images decoded).

    ``sampling_defaults`` are the model's own (``EngineInfo.sampling_defaults``) for unset fields. Without ``max_tokens`` the budget is 1 here; the chat service widens it once the prompt length is
    known (``default_max_tokens``, capped by the room left in ``max_model_length``).
    """
    check_supported(req, config.model_name, config.max_model_length, config.max_batch_size)
    params = sampling_params(req, 1, sampling_defaults)
    images = count_images(req.messages)
    if images > config.max_images_per_request:
        raise APIError(
            400,
            f"Too many images: {images}; at most {config.max_images_per_request} per request.",
            param="messages",
            code="too_many_images",
        )
    chars = text_length(req.messages)
    limit = config.max_model_length * MAX_CHARS_PER_TOKEN
    if chars > limit:
        # Refuse before tokenizing: no tokenizer makes fewer tokens than this from so much text.
        raise APIError(
            400,
            f"The prompt text has {chars} characters, more than can fit in MAX_MODEL_LENGTH="
            f"{config.max_model_length} tokens (at most {limit} characters).",
            param="messages",
            code="context_length_exceeded",
        )
    messages = await to_engine_messages(req.messages, load_image)
    return GenerationRequest(messages=messages, params=params)


def check_supported(
    req: ChatCompletionRequest, served_model: str, max_model_length: int, max_choices: int = 1
) -> None:
    """Refuse what this server cannot honour, with a message that says what to change."""
    if req.model is not None and req.model != served_model:
        raise APIError(
            404,
            f"The model {req.model!r} does not exist; this server serves {served_model!r}.",
            param="model",
            code="model_not_found",
        )
    if not req.messages:
        raise APIError(
            400, "'messages' must contain at least one message.", param="messages", code="invalid_value"
        )
    if req.n is not None and req.n > max_choices:
        raise APIError(
            400,
            f"n={req.n} is too large: at most {max_choices} choices (MAX_BATCH_SIZE, they decode together).",
            param="n",
        )
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
    if req.tools:
        raise APIError(400, "Tool calling is not supported by this server.", param="tools")
    if req.tool_choice not in (None, "none"):
        raise APIError(400, "tool_choice is not supported by this server.", param="tool_choice")
    max_tokens = requested_max_tokens(req)
    if max_tokens is not None and max_tokens >= max_model_length:
        name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        raise APIError(
            400,
            f"{name}={max_tokens} is too large: prompt plus output must fit in the model's context length "
            f"of {max_model_length} tokens (MAX_MODEL_LENGTH).",
            param=name,
            code="context_length_exceeded",
        )


def requested_max_tokens(req: ChatCompletionRequest) -> int | None:
    """`max_completion_tokens` (the newer name) or `max_tokens`."""
    return req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    """`stop` as a tuple of non-empty strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    if len(items) > MAX_STOP_SEQUENCES:
        raise APIError(400, f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.", param="stop")
    if any(not s for s in items):
        raise APIError(400, "Stop sequences must be non-empty strings.", param="stop")
    return tuple(items)


def logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias`` (token id strings -> bias in [-100, 100]) as (id, bias) pairs."""
    if not bias:
        return ()
    if len(bias) > MAX_LOGIT_BIAS:
        raise APIError(400, f"logit_bias may name at most {MAX_LOGIT_BIAS} tokens.", param="logit_bias")
    out: list[tuple[int, float]] = []
    for key, value in bias.items():
        if not key.isdigit():
            raise APIError(400, f"logit_bias keys must be token ids, got {key!r}.", param="logit_bias")
        if not -100.0 <= value <= 100.0:
            raise APIError(
                400, f"logit_bias values must be in [-100, 100], got {value} for {key}.", param="logit_bias"
            )
        out.append((int(key), float(value)))
    return tuple(out)


def grammar_of(response_format: dict[str, Any] | None) -> tuple[str, str] | None:
    """``response_format`` as the engine's grammar: None for text, else ("json_schema", the schema).

    ``json_object`` is any JSON object; ``json_schema`` takes ``json_schema.schema`` (strict or not,
    the answer is held to the schema).
    """
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return ("json_schema", json.dumps({"type": "object"}))
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(
                400,
                "response_format json_schema needs json_schema.schema (a JSON schema object).",
                param="response_format",
            )
        return ("json_schema", json.dumps(schema))
    raise APIError(
        400,
        f"response_format type {kind!r} is not supported (text, json_object or json_schema).",
        param="response_format",
    )


def token_ids(ids: list[int] | None) -> tuple[int, ...]:
    """``stop_token_ids`` as a tuple (their range is the engine's to check: it knows the vocabulary)."""
    if not ids:
        return ()
    if len(ids) > MAX_STOP_SEQUENCES or any(i < 0 for i in ids):
        raise APIError(
            400, f"stop_token_ids: at most {MAX_STOP_SEQUENCES} non-negative ids.", param="stop_token_ids"
        )
    return tuple(ids)


def sampling_params(
    req: ChatCompletionRequest, default_max_tokens: int, defaults: Mapping[str, float] | None = None
) -> SamplingParams:
    """The engine's sampling parameters for a request.

    A field the request leaves unset takes the model's own default (``defaults``: its
    ``generation_config``, ``EngineInfo.sampling_defaults``), else the neutral value (OpenAI's
    temperature 1 and top_p 1). A temperature too small to sample with is passed on as it is: the
    sampler treats it as greedy (``engine.sampler.SAMPLING_EPS``).
    """
    model = dict(defaults or {})

    def pick(name: str, neutral: float) -> float:
        value = getattr(req, name)
        return float(value if value is not None else model.get(name, neutral))

    max_tokens = requested_max_tokens(req)
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else default_max_tokens,
        temperature=pick("temperature", 1.0),
        top_p=pick("top_p", 1.0),
        top_k=int(pick("top_k", 0)),
        min_p=pick("min_p", 0.0),
        repetition_penalty=pick("repetition_penalty", 1.0),
        presence_penalty=pick("presence_penalty", 0.0),
        frequency_penalty=pick("frequency_penalty", 0.0),
        stop=stop_sequences(req.stop),
        stop_token_ids=token_ids(req.stop_token_ids),
        logit_bias=logit_bias(req.logit_bias),
        seed=req.seed,
        logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs or 0,
        grammar=grammar_of(req.response_format),
    )


def text_length(messages: list[ChatMessage]) -> int:
    """Characters of text in the whole conversation."""
    total = 0
    for m in messages:
        if isinstance(m.content, str):
            total += len(m.content)
        elif m.content:
            total += sum(len(p.text) for p in m.content if isinstance(p, TextPart))
    return total


def count_images(messages: list[ChatMessage]) -> int:
    """Image parts in the whole conversation."""
    return sum(
        1 for m in messages if isinstance(m.content, list) for p in m.content if isinstance(p, ImageURLPart)
    )


async def to_engine_messages(messages: list[ChatMessage], load_image: ImageLoader) -> list[dict[str, Any]]:
    """OpenAI messages -> HF chat format (`{"role", "content": [{"type": "text"|"image", ...}]}`).

    Images are loaded concurrently through `load_image(url, param, detail)`.
    """
    out: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], str, str, str | None]] = []  # (part to fill, url, param, detail)
    for i, msg in enumerate(messages):
        role = "system" if msg.role == "developer" else msg.role
        parts: list[dict[str, Any]] = []
        content = msg.content
        if isinstance(content, str):
            if content:
                parts.append({"type": "text", "text": content})
        elif content:
            for j, part in enumerate(content):
                if isinstance(part, TextPart):
                    if part.text:
                        parts.append({"type": "text", "text": part.text})
                else:
                    param = f"messages.{i}.content.{j}.image_url.url"
                    if role != "user":
                        raise APIError(
                            400, f"Images are only allowed in user messages (messages.{i}).", param=param
                        )
                    entry: dict[str, Any] = {"type": "image", "image": None}
                    parts.append(entry)
                    pending.append((entry, part.image_url.url, param, part.image_url.detail))
        if not parts:
            raise APIError(
                400,
                f"messages.{i}.content must not be empty.",
                param=f"messages.{i}.content",
                code="invalid_value",
            )
        out.append({"role": role, "content": parts})
    if pending:
        results = await asyncio.gather(
            *(load_image(url, param, detail) for _, url, param, detail in pending), return_exceptions=True
        )
        for (entry, *_), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            entry["image"] = result
    return out
