"""Chat completions against one engine: a parsed request in, a JSON answer or an SSE stream out.

The HTTP routes stay thin and call `ChatService.create`. Nothing here touches torch: the engine
runs generation off the event loop and this module only awaits its stream. The request becomes the
engine's in `chat_request`, the stream's frames are written in `sse`.

Every chat answer carries a `Server-Timing` header (`StageClock`) with what the server spent before
the first token: reading the body, parsing it, decoding the images, the engine's `prepare` (chat
template + processor), and `first-token` (queue + prefill). A stream sends its headers, the role
chunk and the first token's content in the same moment, as soon as the engine emits that token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from omega_server import sse
from omega_server.chat_request import requested_max_tokens, to_generation_request
from omega_server.engine.errors import EngineError
from omega_server.engine.types import GenerationRequest, StepOutput, TokenLogprob
from omega_server.errors import APIError, from_engine_error
from omega_server.http_config import HttpConfig
from omega_server.images import ImageFetcher
from omega_server.metrics import Metrics
from omega_server.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    Usage,
    choice_logprobs,
    completion_id,
    now,
)

T = TypeVar("T")

CLIENT_CLOSED = 499  # nginx's code for "client closed request"; shows up in requests_total

#: ASGI scope key where `middleware.ApiAccounting` leaves `time.perf_counter()` at a /v1/ request's arrival
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


class ChatService:
    """Serves `POST /v1/chat/completions` against one engine."""

    def __init__(self, config: HttpConfig, engine: Any, metrics: Metrics) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.model_name = config.model_name
        self.images = ImageFetcher(config.images)

    async def aclose(self) -> None:
        """Release the image fetcher's HTTP client."""
        await self.images.aclose()

    async def build(self, req: ChatCompletionRequest) -> GenerationRequest:
        """Validate a request and turn it into an engine request (images decoded)."""
        defaults = getattr(getattr(self.engine, "info", None), "sampling_defaults", None)
        return await to_generation_request(req, self.config, self.images.load, defaults)

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
                room = self.config.max_model_length - prepared.prompt_tokens
                budget = max(1, min(self.config.default_max_tokens, room))
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
        entries: list[TokenLogprob] = []
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
                    entries.extend(out.logprobs or ())
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
                    logprobs=choice_logprobs(entries) if prepared.params.logprobs else None,
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
        chunks = sse.ChunkFrames(self.model_name, include_usage)
        last: StepOutput | None = None
        seen = [False]
        finished = False
        # Frames go out once per engine output, joined into one write: the role chunk with the first
        # token's content, a finished token's content with its finish chunk.
        frames = [chunks.role()]

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
                    if out.text or out.logprobs:
                        frames.append(chunks.content(out.text, out.logprobs))
                    if out.finished:
                        finished = True
                        frames.append(chunks.finish(finish_reason(out)))
                    if frames:
                        yield flush()
            except EngineError as exc:
                frames.append(sse.error_frame(from_engine_error(exc)))
                frames.append(sse.DONE)
                yield flush()
                return
            if not finished:
                frames.append(chunks.finish(finish_reason(last)))
            if include_usage and last is not None:
                frames.append(chunks.usage(last.prompt_tokens, last.completion_tokens))
            frames.append(sse.DONE)
            yield flush()
        except asyncio.CancelledError:
            # The client went away mid-stream (Starlette cancels this generator).
            self.metrics.cancelled.inc()
            raise
        finally:
            await aclose_quietly(outputs)
            self._record_usage(last)
