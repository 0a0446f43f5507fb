"""Chat completions: OpenAI requests -> engine requests, engine output -> OpenAI responses / SSE.

The HTTP routes stay thin and call `ChatService.create`. Nothing here touches torch: the engine
runs generation off the event loop and this module only awaits its stream.

Every chat answer carries a `Server-Timing` header (`StageClock`) with what the server spent before
the first token: reading the body, parsing it, decoding the images, the engine's `prepare` (chat
template + processor), and `first-token` (queue + prefill). A stream sends its headers, the role
chunk and the first token's content in the same moment, as soon as the engine emits that token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from omega_server.engine import EngineError, GenerationRequest, SamplingParams, StepOutput
from omega_server.errors import APIError, describe_validation_error, error_body, from_engine_error
from omega_server.images import ImageFetcher, ImageLimits
from omega_server.metrics import Metrics
from omega_server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ImageURLPart,
    TextPart,
    Usage,
    completion_id,
    now,
)
from omega_server.settings import Settings

T = TypeVar("T")

MAX_STOP_SEQUENCES = 16
MIN_TEMPERATURE = 1e-5
MAX_CHARS_PER_TOKEN = 32  # generous: real tokenizers average 3-5 characters per token
CLIENT_CLOSED = 499  # nginx's code for "client closed request"; shows up in requests_total


#: ASGI scope key where `app.ApiAccounting` leaves `time.perf_counter()` at a /v1/ request's arrival
ARRIVAL = "omega.arrival"


class StageClock:
    """Durations of a request's stages, in order, for the `Server-Timing` response header."""

    def __init__(self, start: float | None = None) -> None:
        self._last = time.perf_counter() if start is None else start
        self.stages: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        """End the stage `name` now (it began where the previous one ended)."""
        now = time.perf_counter()
        self.stages.append((name, now - self._last))
        self._last = now

    def header(self) -> str:
        """`body;dur=1.20, parse;dur=0.80, ...` (milliseconds)."""
        return ", ".join(f"{name};dur={seconds * 1000:.2f}" for name, seconds in self.stages)


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; its generation was cancelled."""


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
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        message, param = describe_validation_error(exc.errors())
        raise APIError(400, message, param=param, code="invalid_value") from None


def check_supported(req: ChatCompletionRequest, served_model: str, max_model_length: int) -> None:
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
    if req.n not in (None, 1):
        raise APIError(
            400, f"n={req.n} is not supported: this server returns exactly one choice (n=1).", param="n"
        )
    if req.logprobs or req.top_logprobs:
        raise APIError(400, "logprobs are not supported by this server.", param="logprobs")
    if req.tools:
        raise APIError(400, "Tool calling is not supported by this server.", param="tools")
    if req.tool_choice not in (None, "none"):
        raise APIError(400, "tool_choice is not supported by this server.", param="tool_choice")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise APIError(400, "Only response_format type 'text' is supported.", param="response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(
                400, f"{name} is not supported by this server (use 0 or leave it out).", param=name
            )
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


def sampling_params(req: ChatCompletionRequest, default_max_tokens: int) -> SamplingParams:
    """The engine's sampling parameters for a request (OpenAI defaults: temperature 1, top_p 1)."""
    max_tokens = requested_max_tokens(req)
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else default_max_tokens,
        temperature=1.0 if req.temperature is None else greedy_if_tiny(req.temperature),
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=stop_sequences(req.stop),
        seed=req.seed,
    )


def greedy_if_tiny(temperature: float) -> float:
    """Temperatures this close to 0 overflow the softmax; they mean greedy decoding."""
    return 0.0 if temperature < MIN_TEMPERATURE else temperature


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


async def to_engine_messages(
    messages: list[ChatMessage], load_image: Callable[[str, str], Awaitable[Any]]
) -> list[dict[str, Any]]:
    """OpenAI messages -> HF chat format (`{"role", "content": [{"type": "text"|"image", ...}]}`).

    Images are loaded concurrently through `load_image(url, param)`.
    """
    out: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], str, str]] = []  # (part to fill, url, param)
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
                    pending.append((entry, part.image_url.url, param))
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
            *(load_image(url, param) for _, url, param in pending), return_exceptions=True
        )
        for (entry, _, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            entry["image"] = result
    return out


async def _until_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the request body was already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising `ClientDisconnected`) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientDisconnected()


def finish_reason(out: StepOutput | None) -> Literal["stop", "length"]:
    """OpenAI's finish_reason for the last output ("length" only when the token budget ran out)."""
    return "length" if out is not None and out.finish_reason == "length" else "stop"


async def aclose_quietly(iterator: Any) -> None:
    """Close an engine stream (which cancels its generation); streams without `aclose` are left alone."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


class ChatService:
    """Serves `POST /v1/chat/completions` against one engine."""

    def __init__(self, settings: Settings, engine: Any, metrics: Metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.model_name = settings.model_name
        self.images = ImageFetcher(
            ImageLimits(
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
                fetch_timeout=settings.image_fetch_timeout,
                allow_urls=settings.allow_image_urls,
                allow_private=settings.allow_private_image_urls,
            )
        )

    async def aclose(self) -> None:
        """Release the image fetcher's HTTP client."""
        await self.images.aclose()

    async def build(self, req: ChatCompletionRequest) -> GenerationRequest:
        """Validate a request and turn it into an engine request (images decoded)."""
        check_supported(req, self.model_name, self.settings.max_model_length)
        # Without max_tokens, prepare with a budget of 1 and widen it once the prompt length is known.
        params = sampling_params(req, 1)
        images = count_images(req.messages)
        if images > self.settings.max_images_per_request:
            raise APIError(
                400,
                f"Too many images: {images}; at most {self.settings.max_images_per_request} per request.",
                param="messages",
                code="too_many_images",
            )
        chars = text_length(req.messages)
        limit = self.settings.max_model_length * MAX_CHARS_PER_TOKEN
        if chars > limit:
            # Refuse before tokenizing: no tokenizer makes fewer tokens than this from so much text.
            raise APIError(
                400,
                f"The prompt text has {chars} characters, more than can fit in MAX_MODEL_LENGTH="
                f"{self.settings.max_model_length} tokens (at most {limit} characters).",
                param="messages",
                code="context_length_exceeded",
            )
        messages = await to_engine_messages(req.messages, self.images.load)
        return GenerationRequest(messages=messages, params=params)

    async def create(
        self, req: ChatCompletionRequest, request: Request, clock: StageClock | None = None
    ) -> Response:
        """Answer one chat-completion request (JSON or SSE); `clock` times its stages (Server-Timing)."""
        arrival = time.monotonic()
        clock = clock or StageClock()
        try:
            gen_req = await cancel_on_disconnect(request, self.build(req))
            clock.mark("images")
            prepared = await cancel_on_disconnect(request, asyncio.to_thread(self.engine.prepare, gen_req))
            clock.mark("prepare")
            if requested_max_tokens(req) is None:
                room = self.settings.max_model_length - prepared.prompt_tokens
                budget = max(1, min(self.settings.default_max_tokens, room))
                prepared.params = dataclasses.replace(prepared.params, max_tokens=budget)
            if req.stream:
                return await self._stream(req, prepared, request, arrival, clock)
            return await cancel_on_disconnect(request, self._complete(prepared, arrival, clock))
        except ClientDisconnected:
            self.metrics.cancelled.inc()
            return Response(status_code=CLIENT_CLOSED)
        except EngineError as exc:
            raise from_engine_error(exc) from None

    def _observe_first(self, arrival: float, seen: list[bool]) -> None:
        if not seen[0]:
            seen[0] = True
            self.metrics.ttft.observe(time.monotonic() - arrival)

    def _record_usage(self, last: StepOutput | None) -> None:
        if last is not None:
            self.metrics.prompt_tokens.inc(last.prompt_tokens)
            self.metrics.output_tokens.inc(last.completion_tokens)

    async def _complete(self, prepared: Any, arrival: float, clock: StageClock) -> JSONResponse:
        texts: list[str] = []
        last: StepOutput | None = None
        seen = [False]
        try:
            outputs = self.engine.stream(prepared)
            try:
                async for out in outputs:
                    if not seen[0]:
                        clock.mark("first-token")
                    self._observe_first(arrival, seen)
                    texts.append(out.text)
                    last = out
            finally:
                await aclose_quietly(outputs)
        finally:
            self._record_usage(last)
        if last is None:
            raise APIError(500, "The engine finished without output.")
        clock.mark("generate")
        body = ChatCompletion(
            id=completion_id(),
            created=now(),
            model=self.model_name,
            choices=[
                Choice(
                    message=AssistantMessage(content="".join(texts)),
                    finish_reason=finish_reason(last),
                )
            ],
            usage=Usage(
                prompt_tokens=last.prompt_tokens,
                completion_tokens=last.completion_tokens,
                total_tokens=last.prompt_tokens + last.completion_tokens,
            ),
        )
        return JSONResponse(body.model_dump(exclude_none=True), headers={"Server-Timing": clock.header()})

    async def _stream(
        self, req: ChatCompletionRequest, prepared: Any, request: Request, arrival: float, clock: StageClock
    ) -> StreamingResponse:
        outputs = self.engine.stream(prepared)
        # Take the first output before answering, so that queue-full and engine errors get their own
        # HTTP status instead of a 200 stream that fails.
        try:
            first: StepOutput | None = await cancel_on_disconnect(request, anext(outputs))
        except StopAsyncIteration:
            first = None
        except BaseException:
            await aclose_quietly(outputs)
            raise
        clock.mark("first-token")
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            self._sse_frames(outputs, first, include_usage, arrival),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Server-Timing": clock.header()},
        )

    async def _sse_frames(
        self,
        outputs: AsyncIterator[StepOutput],
        first: StepOutput | None,
        include_usage: bool,
        arrival: float,
    ) -> AsyncIterator[str]:
        cid, created, model = completion_id(), now(), self.model_name
        usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    **usage_field,
                }
            )

        last: StepOutput | None = None
        seen = [False]
        finished = False
        # Frames go out once per engine output, joined into one write: the role chunk with the first
        # token's content, a finished token's content with its finish chunk.
        frames = [chunk({"role": "assistant", "content": ""})]

        def flush() -> str:
            text = "".join(frames)
            frames.clear()
            return text

        try:

            async def all_outputs() -> AsyncIterator[StepOutput]:
                if first is not None:
                    yield first
                async for item in outputs:
                    yield item

            try:
                async for out in all_outputs():
                    self._observe_first(arrival, seen)
                    last = out
                    if out.text:
                        frames.append(chunk({"content": out.text}))
                    if out.finished:
                        finished = True
                        frames.append(chunk({}, finish_reason(out)))
                    if frames:
                        yield flush()
            except EngineError as exc:
                err = from_engine_error(exc)
                frames.append(_sse(error_body(err.status, err.message, err.param, err.code)))
                frames.append("data: [DONE]\n\n")
                yield flush()
                return
            if not finished:
                frames.append(chunk({}, finish_reason(last)))
            if include_usage and last is not None:
                usage = Usage(
                    prompt_tokens=last.prompt_tokens,
                    completion_tokens=last.completion_tokens,
                    total_tokens=last.prompt_tokens + last.completion_tokens,
                )
                frames.append(
                    _sse(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage.model_dump(),
                        }
                    )
                )
            frames.append("data: [DONE]\n\n")
            yield flush()
        except asyncio.CancelledError:
            # The client went away mid-stream (Starlette cancels this generator).
            self.metrics.cancelled.inc()
            raise
        finally:
            await aclose_quietly(outputs)
            self._record_usage(last)
