"""Prometheus metrics of the server (names fixed by the team brief; the Grafana dashboard uses them).

Each app gets its own registry, so several apps can live in one process (tests). The gauges an
autoscaler reads (running, waiting, KV usage) are read from the engine's stats at scrape time;
``RequestTimer`` times one generation (TTFT, inter-token, end-to-end); ``rejection_reason`` names
why a request was refused (``omega_server_requests_rejected_total``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from omega_server import __version__
from omega_server.engine.types import EngineInfo, EngineStats

# `*_created` series only double the exposition; dashboards do not use them.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)

#: ``omega_server_requests_rejected_total``'s reasons (the request never reached generation).
REJECTION_REASONS = ("queue_full", "loading", "engine_dead", "invalid", "too_large", "unauthorized")


def rejection_reason(status: int, code: str | None) -> str | None:
    """Why a request was refused, from its error answer; None for answers that are not refusals
    (404, 405, 500: a route that does not exist or the server's own failure)."""
    if status == 429:
        return "queue_full"
    if status == 503:
        return "loading" if code == "loading" else "engine_dead"
    if status == 400:
        return "invalid"
    if status == 413:
        return "too_large"
    if status == 401:
        return "unauthorized"
    return None


def decode_path(info: EngineInfo) -> str:
    """The decode path in one word: ``dynamic``, ``static``, plus ``+cuda_graphs`` / ``+compiled``."""
    path = info.kv_cache
    if info.cuda_graphs:
        path += "+cuda_graphs"
    if info.compiled:
        path += "+compiled"
    return path


class _LiveGauges(Collector):
    """Gauges read at scrape time: queue, running batch and KV usage (engine stats), GPU memory (torch)."""

    def __init__(
        self,
        stats: Callable[[], EngineStats | None],
        devices: Callable[[], list[str]],
        capacity: Callable[[], tuple[int, int]],
    ) -> None:
        self._stats = stats
        self._devices = devices
        self._capacity = capacity

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._stats()
        waiting = float(stats.queue_depth) if stats is not None else 0.0
        running = float(stats.running) if stats is not None else 0.0
        tokens = float(stats.kv_tokens) if stats is not None else 0.0
        slots, width = self._capacity()
        yield _gauge("omega_server_queue_depth", "Requests waiting for the engine.", waiting)
        yield _gauge(
            "omega_server_requests_waiting",
            "Requests queued, not yet admitted into the running batch (vLLM's num_requests_waiting).",
            waiting,
        )
        yield _gauge(
            "omega_server_requests_running",
            "Requests in the running batch (vLLM's num_requests_running).",
            running,
        )
        yield _gauge(
            "omega_server_kv_slots_usage_ratio",
            "Share of the running batch's slots in use: running / MAX_BATCH_SIZE (0..1).",
            running / slots if slots else 0.0,
        )
        yield _gauge(
            "omega_server_kv_token_usage_ratio",
            "Share of the KV token capacity held by running requests: their cached tokens / "
            "(MAX_BATCH_SIZE x MAX_MODEL_LENGTH) (0..1; vLLM's gpu_cache_usage_perc).",
            tokens / (slots * width) if slots and width else 0.0,
        )
        mem = GaugeMetricFamily(
            "omega_server_gpu_memory_allocated_bytes",
            "GPU memory allocated by torch, per device.",
            labels=["device"],
        )
        for device, allocated in _gpu_memory(self._devices()):
            mem.add_metric([device], float(allocated))
        yield mem
        for name, field, documentation in _PREFIX_COUNTERS:
            value = float(getattr(stats, field)) if stats is not None else 0.0
            yield CounterMetricFamily(name, documentation, value=value)


#: prefix caching's counters (``EngineStats``), read at scrape time
_PREFIX_COUNTERS = (
    (
        "omega_server_prefix_cache_queries",
        "prefix_cache_queries",
        "Prompts prefilled with prefix caching on (each looked up the prefix cache).",
    ),
    (
        "omega_server_prefix_cache_hits",
        "prefix_cache_hits",
        "Of them, prompts prefilled from cached prefix blocks (only the rest of the prompt computed).",
    ),
    (
        "omega_server_prefix_cache_hit_tokens",
        "prefix_cache_hit_tokens",
        "Prompt tokens whose keys and values came from the prefix cache instead of a prefill.",
    ),
)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, documentation)
    g.add_metric([], value)
    return g


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
        capacity: Callable[[], tuple[int, int]] = lambda: (0, 0),
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
        self.inter_token_latency = Histogram(
            "omega_server_inter_token_latency_seconds",
            "Time between two consecutive generated tokens of one request (streamed or not).",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.e2e_latency = Histogram(
            "omega_server_e2e_request_latency_seconds",
            "Time from request arrival to its last generated token (generations that finished).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "omega_server_requests_rejected",
            "Requests refused before generation, by reason: queue_full (429), loading / engine_dead "
            "(503; the server has no draining state of its own), invalid (400), too_large (413), "
            "unauthorized (401).",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason=reason)
        self.preemptions = Counter(
            "omega_server_preemptions",
            "Running requests preempted to free KV space. Always 0: the engine never preempts (a "
            "request holds its slot until it finishes; the queue waits instead).",
            registry=r,
        )
        self.server_info = Gauge(
            "omega_server_info",
            "The engine this server runs; value 1: served model name, checkpoint model type, attention "
            "backend in use, decode path (dynamic | static, +cuda_graphs, +compiled), dtype, version.",
            ["model", "model_type", "attention_backend", "decode_path", "dtype", "version"],
            registry=r,
        )
        r.register(_LiveGauges(stats, devices, capacity))

    def record_engine_info(self, info: EngineInfo, model: str) -> None:
        """Set the info and attention gauges and add the engine load's flash-attn failures."""
        self.attention_info.labels(backend=str(info.attn), requested=str(info.attn_requested)).set(1)
        self.server_info.labels(
            model=model,
            model_type=info.resolved_model_type or info.model_type,
            attention_backend=str(info.attn),
            decode_path=decode_path(info),
            dtype=info.dtype.removeprefix("torch."),
            version=__version__,
        ).set(1)
        if info.flash_load_failures > 0:
            self.flash_attn_load_failures.inc(info.flash_load_failures)

    def reject(self, status: int, code: str | None) -> None:
        """Count a refused request (nothing for answers that are not refusals: ``rejection_reason``)."""
        reason = rejection_reason(status, code)
        if reason is not None:
            self.rejected.labels(reason=reason).inc()

    def timer(self, arrival: float) -> RequestTimer:
        """A timer for one generation that arrived at ``arrival`` (``time.monotonic()``)."""
        return RequestTimer(self, arrival)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class RequestTimer:
    """Times one generation's outputs: TTFT at the first, inter-token latency between the next ones
    (the gap spread over the tokens an output carries), end-to-end latency at the finished one."""

    def __init__(self, metrics: Metrics, arrival: float) -> None:
        self._m = metrics
        self._arrival = arrival
        self._last: float | None = None

    @property
    def first_seen(self) -> bool:
        return self._last is not None

    def output(self, out: Any) -> None:
        """Record one engine output (a ``StepOutput``) as it reaches the HTTP layer."""
        now = time.monotonic()
        if self._last is None:
            self._m.ttft.observe(now - self._arrival)
        else:
            n = max(1, len(out.token_ids))
            for _ in range(n):
                self._m.inter_token_latency.observe((now - self._last) / n)
        self._last = now
        if out.finished:
            self._m.e2e_latency.observe(now - self._arrival)
