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
from omega_server.engine.types import GenerationRequest, PreparedRequest, StepOutput, TokenLogprob
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


def default_budget(default_max_tokens: int | None, max_model_length: int, prompt_tokens: int) -> int:
    """``max_tokens`` of a request that gives none: the room left in the context after the prompt,
    capped by ``DEFAULT_MAX_TOKENS`` when that is set (at least 1)."""
    room = max_model_length - prompt_tokens
    return max(1, room if default_max_tokens is None else min(default_max_tokens, room))


def choice_requests(prepared: PreparedRequest, n: int) -> list[PreparedRequest]:
    """The engine requests of ``n`` choices: one prompt, and with a seed, seed + i for choice i (so that
    the choices differ and the answer is reproducible)."""
    if n == 1:
        return [prepared]
    seed = prepared.params.seed
    return [
        dataclasses.replace(
            prepared, params=dataclasses.replace(prepared.params, seed=None if seed is None else seed + i)
        )
        for i in range(n)
    ]


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
                budget = default_budget(
                    self.config.default_max_tokens, self.config.max_model_length, prepared.prompt_tokens
                )
                prepared.params = dataclasses.replace(prepared.params, max_tokens=budget)
            choices = choice_requests(prepared, req.n or 1)
            if req.stream:
                return await self._stream(req, choices, request, arrival, clock)
            return await cancel_on_disconnect(request, self._complete(choices, arrival, clock))
        except ClientDisconnected:
            self.metrics.cancelled.inc()
            return Response(status_code=CLIENT_CLOSED)
        except EngineError as exc:
            raise from_engine_error(exc) from None

    def _record_usage(self, last: StepOutput | None) -> None:
        if last is not None:
            self.metrics.prompt_tokens.inc(last.prompt_tokens)
            self.metrics.output_tokens.inc(last.completion_tokens)

    async def _collect(
        self, prepared: Any, arrival: float, clock: StageClock, seen: list[bool]
    ) -> tuple[str, list[TokenLogprob], StepOutput]:
        """One choice run to its end: its text, its log-probability entries and its last output."""
        texts: list[str] = []
        entries: list[TokenLogprob] = []
        last: StepOutput | None = None
        timer = self.metrics.timer(arrival)  # one per choice: its TTFT, inter-token and e2e latency
        try:
            outputs = self.engine.stream(prepared)
            try:
                async for out in outputs:
                    if not seen[0]:  # the first token of any choice
                        seen[0] = True
                        clock.mark("first-token")
                    timer.output(out)
                    texts.append(out.text)
                    entries.extend(out.logprobs or ())
                    last = out
            finally:
                await aclose_quietly(outputs)
        finally:
            self._record_usage(last)
        if last is None:
            raise APIError(500, "The engine finished without output.")
        return "".join(texts), entries, last

    async def _complete(self, choices: list[Any], arrival: float, clock: StageClock) -> JSONResponse:
        seen = [False]
        if len(choices) == 1:
            results = [await self._collect(choices[0], arrival, clock, seen)]
        else:  # the choices run together; one failing cancels the others
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._collect(p, arrival, clock, seen)) for p in choices]
            results = [t.result() for t in tasks]
        clock.mark("generate")
        prompt = results[0][2].prompt_tokens
        completion = sum(last.completion_tokens for _, _, last in results)
        body = ChatCompletion(
            id=completion_id(),
            created=now(),
            model=self.model_name,
            choices=[
                Choice(
                    index=i,
                    message=AssistantMessage(content=text),
                    finish_reason=finish_reason(last),
                    logprobs=choice_logprobs(entries) if prepared.params.logprobs else None,
                )
                for i, ((text, entries, last), prepared) in enumerate(zip(results, choices, strict=True))
            ],
            usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
        )
        return JSONResponse(body.model_dump(exclude_none=True), headers={"Server-Timing": clock.header()})

    async def _stream(
        self,
        req: ChatCompletionRequest,
        choices: list[Any],
        request: Request,
        arrival: float,
        clock: StageClock,
    ) -> StreamingResponse:
        streams = [self.engine.stream(p) for p in choices]
        # Take each choice's first output before answering, so that queue-full and engine errors get
        # their own HTTP status instead of a 200 stream that fails.
        try:
            firsts = await cancel_on_disconnect(request, _first_outputs(streams))
        except BaseException:
            for stream in streams:
                await aclose_quietly(stream)
            raise
        clock.mark("first-token")
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(
            self._sse_frames(streams, firsts, include_usage, arrival),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Server-Timing": clock.header()},
        )

    async def _sse_frames(
        self,
        streams: list[AsyncIterator[StepOutput]],
        firsts: list[StepOutput | None],
        include_usage: bool,
        arrival: float,
    ) -> AsyncIterator[str]:
        chunks = sse.ChunkFrames(self.model_name, include_usage)
        n = len(streams)
        last: list[StepOutput | None] = [None] * n
        timers = [self.metrics.timer(arrival) for _ in range(n)]
        finished = [False] * n
        # Frames go out once per engine output, joined into one write: the role chunk with the first
        # token's content, a finished token's content with its finish chunk.
        frames = [chunks.role(i) for i in range(n)]

        def flush() -> str:
            text = "".join(frames)
            frames.clear()
            return text

        try:
            try:
                async for i, out in _merged(streams, firsts):
                    timers[i].output(out)
                    last[i] = out
                    if out.text or out.logprobs:
                        frames.append(chunks.content(out.text, out.logprobs, index=i))
                    if out.finished:
                        finished[i] = True
                        frames.append(chunks.finish(finish_reason(out), index=i))
                    if frames:
                        yield flush()
            except EngineError as exc:
                frames.append(sse.error_frame(from_engine_error(exc)))
                frames.append(sse.DONE)
                yield flush()
                return
            for i in range(n):
                if not finished[i]:
                    frames.append(chunks.finish(finish_reason(last[i]), index=i))
            ends = [out for out in last if out is not None]
            if include_usage and ends:
                completion = sum(out.completion_tokens for out in ends)
                frames.append(chunks.usage(ends[0].prompt_tokens, completion))
            frames.append(sse.DONE)
            yield flush()
        except asyncio.CancelledError:
            # The client went away mid-stream (Starlette cancels this generator).
            self.metrics.cancelled.inc()
            raise
        finally:
            for stream in streams:
                await aclose_quietly(stream)
            for end in last:
                self._record_usage(end)


async def _first_outputs(streams: list[AsyncIterator[StepOutput]]) -> list[StepOutput | None]:
    """Each stream's first output (None for one that ended at once), awaited together."""

    async def first(stream: AsyncIterator[StepOutput]) -> StepOutput | None:
        try:
            return await anext(stream)
        except StopAsyncIteration:
            return None

    if len(streams) == 1:
        return [await first(streams[0])]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(first(s)) for s in streams]
    return [t.result() for t in tasks]


async def _merged(
    streams: list[AsyncIterator[StepOutput]], firsts: list[StepOutput | None]
) -> AsyncIterator[tuple[int, StepOutput]]:
    """(choice index, output) of several streams as they come, each stream's first output first."""
    for i, head in enumerate(firsts):
        if head is not None:
            yield i, head
    live = [i for i, head in enumerate(firsts) if head is not None and not head.finished]
    if len(streams) == 1:
        if live:
            async for item in streams[0]:
                yield 0, item
        return
    waiting = {asyncio.ensure_future(anext(streams[i])): i for i in live}
    try:
        while waiting:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                i = waiting.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                yield i, item
                if not item.finished:
                    waiting[asyncio.ensure_future(anext(streams[i]))] = i
    finally:
        for task in waiting:
            task.cancel()
