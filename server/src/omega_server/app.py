"""`create_app(settings, engine=None)`: the FastAPI app, and a lifespan that loads the engine.

Without an engine the lifespan loads one in a background thread, so `/live` answers and `/health`
says 503 "loading" meanwhile. A load failure marks the state failed and calls `on_fatal(line)`
(`__main__` then prints it and exits non-zero).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omega_server import __version__
from omega_server.errors import APIError, error_body, install_error_handlers
from omega_server.metrics import Metrics
from omega_server.routes import openai as openai_routes
from omega_server.routes import ops
from omega_server.serving import ARRIVAL
from omega_server.settings import Settings
from omega_server.state import ServerState

log = logging.getLogger("omega_server")


def _too_large_message(limit: int) -> str:
    return f"Request body is larger than the limit of {limit} bytes (MAX_REQUEST_BYTES)."


class BodyTooLarge(APIError):
    """Raised into the app by the body read that passes the limit (the 413 has been sent already)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_message(limit), headers={"Connection": "close"})


class ApiAccounting:
    """ASGI middleware for /v1/*: refuses bodies over the limit (413), counts statuses and durations.

    The limit holds from the `Content-Length` header when there is one, and otherwise (a chunked
    body) on the bytes received: the message that passes the limit gets the 413 at once, with
    `Connection: close`, and the app's read fails with `BodyTooLarge` (its own answer is dropped),
    so the rest of the body is never read.

    Durations run to the last body byte, so streamed answers are timed in full. The arrival time
    (`time.perf_counter()`, once the request head is parsed) is left in the scope under `ARRIVAL`,
    where the chat route starts its Server-Timing clock.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL] = time.perf_counter()
        start = time.monotonic()
        status = [500]
        started = [False]  # the app's answer has begun
        refused = [False]  # the 413 went out, from the bytes received
        received = [0]

        async def counting_send(message: Message) -> None:
            if refused[0]:
                return  # the 413 went out already; the app's own answer to the failed read is dropped
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
            await send(message)

        async def limited_receive() -> Message:
            if refused[0]:
                raise BodyTooLarge(self.max_body)
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_body:
                    if not started[0]:
                        await self._too_large(counting_send)
                    refused[0] = True
                    raise BodyTooLarge(self.max_body)
            return message

        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        try:
            if length.isdigit() and int(length) > self.max_body:
                await self._too_large(counting_send)
            else:
                # `limited_receive` sends the 413 before it raises: nothing is left to answer.
                with contextlib.suppress(BodyTooLarge):
                    await self.app(scope, limited_receive, counting_send)
        finally:
            self.metrics.requests.labels(status=str(status[0])).inc()
            self.metrics.request_duration.observe(time.monotonic() - start)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(error_body(413, _too_large_message(self.max_body))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _load_engine(settings: Settings) -> Any:
    """Load the engine (blocking); imported here so the HTTP layer starts without torch."""
    from omega_server.engine import Engine

    return Engine.load(engine_config(settings))


def engine_config(settings: Settings) -> Any:
    """The engine's configuration from the server's settings (the one place that maps them)."""
    from omega_server.engine import EngineConfig

    return EngineConfig(
        model_path=settings.model_path,
        attn_impl=settings.attn_impl,
        dtype=settings.dtype,
        max_batch_size=settings.max_batch_size,
        max_model_length=settings.max_model_length,
        max_queue=settings.max_queue,
        device=settings.device,
        served_model_name=settings.model_name,
        max_images_per_request=settings.max_images_per_request,
        compile=settings.compile,
        fast_decode=settings.fast_decode,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def create_app(
    settings: Settings,
    engine: Any | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """The server app. With `engine` given, it serves that engine at once (its lifecycle stays the caller's)."""
    state = ServerState(settings)
    owns_engine = engine is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            state.attach(engine)
        else:

            def load() -> None:
                try:
                    loaded = _load_engine(settings)
                except BaseException as exc:
                    detail = (
                        str(exc)
                        if "MODEL_PATH" in str(exc)
                        else (
                            f"could not load the model from MODEL_PATH={settings.model_path}: {type(exc).__name__}: {exc}"
                        )
                    )
                    line = _one_line(f"fatal: {detail}")
                    state.fail(line.removeprefix("fatal: "))
                    if on_fatal is not None:
                        on_fatal(line)
                    else:
                        log.error("%s", line)
                    return
                if not state.attach(loaded):  # the app stopped while the model loaded
                    loaded.shutdown()

            threading.Thread(target=load, name="omega-engine-load", daemon=True).start()
        try:
            yield
        finally:
            await state.close(shutdown_engine=owns_engine)

    app = FastAPI(
        title="omega-vlm-server",
        version=__version__,
        description="OpenAI-compatible vision-language-model server that reports its real attention backend.",
        lifespan=lifespan,
    )
    app.state.omega = state
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(openai_routes.router)
    app.add_middleware(ApiAccounting, metrics=state.metrics, max_body=settings.max_request_bytes)
    return app
