"""`create_app(settings, engine=None)`: the FastAPI app, and a lifespan that loads the engine.

The settings cross into the house here, once: `engine_config` makes the engine's `EngineConfig`,
`http_config` the HTTP layer's `HttpConfig`; no module below this one sees `Settings`.

Without an engine the lifespan loads one in a background thread, so `/live` answers and `/health`
says 503 "loading" meanwhile. A load failure marks the state failed and calls `on_fatal(line)`
(`__main__` then prints it and exits non-zero). Nothing here imports torch: the engine is imported
when it is loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from omega_server import __version__, flash_failure
from omega_server.engine.errors import StartupError
from omega_server.engine.types import EngineConfig
from omega_server.errors import install_error_handlers
from omega_server.http_config import HttpConfig
from omega_server.images import ImageLimits
from omega_server.middleware import ApiAccounting
from omega_server.routes import openai as openai_routes
from omega_server.routes import ops
from omega_server.settings import Settings
from omega_server.state import ServerState

log = logging.getLogger("omega_server")


def _load_engine(config: EngineConfig) -> Any:
    """Load the engine (blocking); imported here so the HTTP layer starts without torch."""
    from omega_server.engine import Engine

    return Engine.load(config)


def engine_config(settings: Settings) -> EngineConfig:
    """The engine's configuration from the server's settings (the one place that maps them)."""
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
        gpu_memory_utilization=settings.gpu_memory_utilization,
        preprocess_workers=settings.preprocess_workers,
        prefix_caching=settings.enable_prefix_caching,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        prefix_cache_tokens=settings.prefix_cache_tokens,
        tensor_parallel_size=settings.tensor_parallel_size,
    )


def http_config(settings: Settings) -> HttpConfig:
    """The HTTP layer's configuration from the server's settings (the one place that maps them)."""
    return HttpConfig(
        model_name=settings.model_name,
        attn_impl=settings.attn_impl,
        max_batch_size=settings.max_batch_size,
        max_model_length=settings.max_model_length,
        default_max_tokens=settings.default_max_tokens,
        max_images_per_request=settings.max_images_per_request,
        api_key=settings.api_key,
        worker_stall_seconds=settings.worker_stall_seconds,
        images=ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            fetch_timeout=settings.image_fetch_timeout,
            allow_urls=settings.allow_image_urls,
            allow_private=settings.allow_private_image_urls,
        ),
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def create_app(
    settings: Settings,
    engine: Any | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """The server app. With `engine` given, it serves that engine at once (its lifecycle stays the caller's)."""
    state = ServerState(http_config(settings))
    owns_engine = engine is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            state.attach(engine)
        else:

            def load() -> None:
                try:
                    loaded = _load_engine(engine_config(settings))
                except BaseException as exc:
                    detail = (
                        f"{exc.kind}: {exc}"  # its own reason for the operator
                        if isinstance(exc, StartupError)
                        else str(exc)
                        if "MODEL_PATH" in str(exc)
                        else (
                            f"could not load the model from MODEL_PATH={settings.model_path}: {type(exc).__name__}: {exc}"
                        )
                    )
                    note = flash_failure.note_of(exc)  # how flash failed before, when it did
                    line = _one_line(f"fatal: {detail}" + (f" {note}" if note else ""))
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
