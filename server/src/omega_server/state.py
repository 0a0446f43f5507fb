"""The app's runtime state: load phase, the engine once loaded, metrics, and the /health body."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Literal

from omega_server import __version__
from omega_server.errors import APIError
from omega_server.metrics import Metrics
from omega_server.serving import ChatService
from omega_server.settings import Settings

Phase = Literal["loading", "ready", "failed", "dead"]
FLASH = ("auto", "flash_attention_2")


def info_get(info: Any, key: str, default: Any = None) -> Any:
    """A field of the engine's info (a mapping or an object)."""
    if info is None:
        return default
    if isinstance(info, dict):
        return info.get(key, default)
    return getattr(info, key, default)


def decode_report(info: Any) -> dict[str, Any]:
    """`decode` of /health: the decode path the engine really runs (null fields before it loads).

    ``kv_cache`` static|dynamic, ``cuda_graphs``, ``compiled`` (torch.compile), ``gqa_decode`` (one-token
    attention on the unexpanded key/value heads), ``experts`` (a MoE model's experts path, e.g.
    ``omega_fused_decode`` or ``grouped_mm``; null for a dense model).
    """
    return {
        "kv_cache": info_get(info, "kv_cache"),
        "cuda_graphs": info_get(info, "cuda_graphs"),
        "compiled": info_get(info, "compiled"),
        "gqa_decode": info_get(info, "gqa_decode"),
        "experts": info_get(info, "experts_implementation"),
    }


def flash_report(info: Any) -> dict[str, Any] | None:
    """`flash_attn` of /health: `{available, loaded, version, error}`."""
    flash = info_get(info, "flash_attn")
    if flash is None:
        return None
    return {k: info_get(flash, k) for k in ("available", "loaded", "version", "error")}


class ServerState:
    """Everything the routes need; `app.state.omega` holds one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = int(time.time())
        self.engine: Any | None = None
        self.error: str | None = None
        self._phase: Phase = "loading"
        self._closed = False
        self._lock = threading.Lock()
        self._chat: ChatService | None = None
        self.metrics = Metrics(stats=self._stats, devices=self._devices)

    def _stats(self) -> Any | None:
        return self.engine.stats if self.engine is not None else None

    def _devices(self) -> list[str]:
        return (
            [str(d) for d in info_get(self.engine.info, "devices", []) or []]
            if self.engine is not None
            else []
        )

    @property
    def phase(self) -> Phase:
        """loading | ready | failed (load error) | dead (engine stopped)."""
        if self._phase == "ready" and self.engine is not None and not self.engine.alive:
            return "dead"
        return self._phase

    def attach(self, engine: Any) -> bool:
        """Start serving with a loaded engine: hook batch sizes into metrics, record the backend.

        Returns False (and leaves the engine alone) when the server is already closing.
        """
        with self._lock:
            if self._closed:
                return False
            self.engine = engine
            engine.batch_observer = self.metrics.batch_size.observe
            info = engine.info
            requested = str(info_get(info, "attn_requested", self.settings.attn_impl))
            flash = flash_report(info) or {}
            failures = info_get(info, "flash_load_failures")
            if failures is None:  # engines that do not count: infer from the report
                failures = int(requested in FLASH and not flash.get("loaded") and bool(flash.get("error")))
            self.metrics.record_engine_info(
                backend=str(info_get(info, "attn")), requested=requested, flash_failures=int(failures)
            )
            self._chat = ChatService(self.settings, engine, self.metrics)
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
        """The /health body of DESIGN.md 3.2 (same keys in every phase)."""
        phase = self.phase
        info = self.engine.info if self.engine is not None else None
        s = self.settings
        return {
            "status": phase,
            "ready": phase == "ready",
            "attn": info_get(info, "attn"),
            "attn_requested": info_get(info, "attn_requested", s.attn_impl),
            "flash_attn": flash_report(info),
            "model": s.model_name,
            "model_type": info_get(info, "model_type"),
            "dtype": str(info_get(info, "dtype")) if info is not None else None,
            "devices": [str(d) for d in info_get(info, "devices", []) or []],
            "device_names": [str(d) for d in info_get(info, "device_names", []) or []],
            "batch": {"max_batch_size": info_get(info, "max_batch_size", s.max_batch_size)},
            "max_model_length": info_get(info, "max_model_length", s.max_model_length),
            "decode": decode_report(info),
            "version": __version__,
            "error": self.error if phase != "dead" else (self.error or "the engine stopped"),
        }

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
