"""Prometheus metrics of the server (names fixed by the team brief; the Grafana dashboard uses them).

Each app gets its own registry, so several apps can live in one process (tests).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from omega_server.engine.types import EngineStats

# `*_created` series only double the exposition; dashboards do not use them.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class _LiveGauges(Collector):
    """Gauges read at scrape time: queue depth (engine stats) and GPU memory (torch, if loaded)."""

    def __init__(self, stats: Callable[[], EngineStats | None], devices: Callable[[], list[str]]) -> None:
        self._stats = stats
        self._devices = devices

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("omega_server_queue_depth", "Requests waiting for the engine.")
        stats = self._stats()
        depth.add_metric([], float(stats.queue_depth) if stats is not None else 0.0)
        yield depth
        mem = GaugeMetricFamily(
            "omega_server_gpu_memory_allocated_bytes",
            "GPU memory allocated by torch, per device.",
            labels=["device"],
        )
        for device, allocated in _gpu_memory(self._devices()):
            mem.add_metric([device], float(allocated))
        yield mem


def _gpu_memory(devices: list[str]) -> list[tuple[str, int]]:
    """Allocated bytes per CUDA device; empty on CPU. torch is only consulted when the engine loaded it."""
    torch = sys.modules.get("torch")
    if torch is None or not any(d.startswith("cuda") for d in devices):
        return []
    try:
        if not torch.cuda.is_available():
            return []
        return [(d, int(torch.cuda.memory_allocated(d))) for d in devices if d.startswith("cuda")]
    except Exception:  # a broken device must not break /metrics
        return []


class Metrics:
    """The server's metrics on a private registry."""

    def __init__(
        self,
        stats: Callable[[], EngineStats | None] = lambda: None,
        devices: Callable[[], list[str]] = list,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "omega_server_requests", "API requests by HTTP status code.", ["status"], registry=r
        )
        self.request_duration = Histogram(
            "omega_server_request_duration_seconds",
            "API request duration, to the last byte (streams included).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "omega_server_time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.output_tokens = Counter("omega_server_output_tokens", "Generated tokens.", registry=r)
        self.prompt_tokens = Counter(
            "omega_server_prompt_tokens", "Prompt tokens of served requests.", registry=r
        )
        self.batch_size = Histogram(
            "omega_server_batch_size", "Requests per forward pass.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.attention_info = Gauge(
            "omega_server_attention_info",
            "Attention backend in use (backend) and asked for (requested); value 1.",
            ["backend", "requested"],
            registry=r,
        )
        self.flash_attn_load_failures = Counter(
            "omega_server_flash_attn_load_failures",
            "Times flash-attn 2 was asked for (auto or flash_attention_2) and failed to load.",
            registry=r,
        )
        self.cancelled = Counter(
            "omega_server_requests_cancelled",
            "Generations cancelled because the client went away.",
            registry=r,
        )
        r.register(_LiveGauges(stats, devices))

    def record_engine_info(self, backend: str, requested: str, flash_failures: int) -> None:
        """Set the attention info gauge and add the engine load's flash-attn failures."""
        self.attention_info.labels(backend=backend, requested=requested).set(1)
        if flash_failures > 0:
            self.flash_attn_load_failures.inc(flash_failures)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
