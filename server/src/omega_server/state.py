"""The app's runtime state: the load phase, the engine once loaded, its chat service and metrics.

``health()`` gives the /health body of this state (built by ``health.health_body``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from omega_server.errors import APIError
from omega_server.health import Phase, health_body
from omega_server.http_config import HttpConfig
from omega_server.metrics import Metrics
from omega_server.serving import ChatService


class ServerState:
    """Everything the routes need; `app.state.omega` holds one."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.started = int(time.time())
        self.engine: Any | None = None
        self.error: str | None = None
        self._phase: Phase = "loading"
        self._closed = False
        self._lock = threading.Lock()
        self._chat: ChatService | None = None
        self.metrics = Metrics(stats=self._stats, devices=self._devices, capacity=self._capacity)

    def _stats(self) -> Any | None:
        return self.engine.stats if self.engine is not None else None

    def _devices(self) -> list[str]:
        return [str(d) for d in self.engine.info.devices] if self.engine is not None else []

    def _capacity(self) -> tuple[int, int]:
        """(KV slots, tokens per slot) of the loaded engine: MAX_BATCH_SIZE, MAX_MODEL_LENGTH."""
        info = self.engine.info if self.engine is not None else None
        return (int(info.max_batch_size), int(info.max_model_length)) if info is not None else (0, 0)

    @property
    def phase(self) -> Phase:
        """loading | ready | failed (load error) | dead (engine stopped)."""
        if self._phase == "ready" and self.engine is not None and not self.engine.alive:
            return "dead"
        return self._phase

    def stalled_seconds(self) -> float:
        """How long the engine's worker has made no progress with work pending (0: fine or not loaded)."""
        stalled = getattr(self.engine, "stalled_seconds", None)
        return float(stalled()) if stalled is not None else 0.0

    def attach(self, engine: Any) -> bool:
        """Start serving with a loaded engine: hook batch sizes into metrics, record what it runs.

        Returns False (and leaves the engine alone) when the server is already closing.
        """
        with self._lock:
            if self._closed:
                return False
            self.engine = engine
            engine.batch_observer = self.metrics.batch_size.observe
            self.metrics.record_engine_info(engine.info, model=self.config.model_name)
            self._chat = ChatService(self.config, engine, self.metrics)
            self._phase = "ready"
            return True

    def fail(self, message: str) -> None:
        """The engine could not be loaded."""
        with self._lock:
            self.error = message
            self._phase = "failed"

    def chat(self) -> ChatService:
        """The chat service, or 503 while loading / after a failure."""
        phase = self.phase
        if phase == "ready" and self._chat is not None:
            return self._chat
        if phase == "loading":
            raise APIError(
                503,
                "The model is still loading; retry shortly.",
                code="loading",
                headers={"Retry-After": "5"},
            )
        raise APIError(
            503, f"The engine is not available ({phase}): {self.error or 'stopped'}.", code="engine_dead"
        )

    def health(self) -> dict[str, Any]:
        """The /health body of DESIGN.md 3.2 (same keys in every phase): ``health.health_body``."""
        info = self.engine.info if self.engine is not None else None
        return health_body(self.phase, info, self.config, self.error)

    async def close(self, shutdown_engine: bool = True) -> None:
        """Stop serving: release the HTTP client and (when it is ours) shut the engine down."""
        with self._lock:
            self._closed = True
            self._phase = "failed" if self._phase == "failed" else "dead"
            chat, engine = self._chat, self.engine
        if chat is not None:
            await chat.aclose()
        if engine is not None and shutdown_engine:
            await asyncio.to_thread(engine.shutdown)
