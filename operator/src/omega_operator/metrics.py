"""Prometheus metrics of the operator (names are a cross-team contract; the dashboard queries them)."""

from __future__ import annotations

from collections import Counter as _Tally

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "omega_operator_reconciles", "Reconciles of OmegaVLMs by result (success|error|invalid)", ["result"]
)
RECONCILE_DURATION = Histogram(
    "omega_operator_reconcile_duration_seconds",
    "Time of one reconcile",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HEALTH_PROBES = Counter(
    "omega_operator_health_probes", "Pod /health probes by result (ready|not_ready|unreachable)", ["result"]
)
HEALTH_PROBE_DURATION = Histogram("omega_operator_health_probe_duration_seconds", "Time of one /health probe")
FALLBACKS = Counter("omega_operator_fallbacks", "Rollbacks from the flash to the sdpa variant", ["reason"])
OMEGAVLMS = Gauge("omega_operator_omegavlms", "OmegaVLMs per phase", ["phase"])
OMEGAVLM_INFO = Gauge(
    "omega_operator_omegavlm_info",
    "One series per OmegaVLM (=1) with its phase and active attention backend",
    ["namespace", "name", "phase", "attention"],
)

PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed")

# (namespace, name) -> (phase, attention) as last exported.
_known: dict[tuple[str, str], tuple[str, str]] = {}


def observe_object(namespace: str, name: str, phase: str | None, attention: str | None) -> None:
    """Record one OmegaVLM's phase and active attention (replaces its previous series)."""
    key = (namespace, name)
    value = (phase or "Pending", attention or "unknown")
    old = _known.get(key)
    if old == value:
        return
    if old is not None:
        OMEGAVLM_INFO.remove(namespace, name, *old)
    OMEGAVLM_INFO.labels(namespace, name, *value).set(1)
    _known[key] = value
    _refresh_phases()


def forget_object(namespace: str, name: str) -> None:
    old = _known.pop((namespace, name), None)
    if old is not None:
        OMEGAVLM_INFO.remove(namespace, name, *old)
        _refresh_phases()


def _refresh_phases() -> None:
    tally = _Tally(phase for phase, _ in _known.values())
    for phase in PHASES:
        OMEGAVLMS.labels(phase).set(tally.get(phase, 0))


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Expose /metrics on that port (0 = do not serve)."""
    if port:
        start_http_server(port, registry=registry)
