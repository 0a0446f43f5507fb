"""Prometheus metrics of the operator (names are a cross-team contract; the dashboard queries them).

Call sites use the small functions here (``observe_probe``, ``count_rollback``, ``count_error``,
``observe_object``, ``observe_status``) rather than the families, so a label's values live in one place.
"""

from __future__ import annotations

import contextlib
from collections import Counter as _Tally
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from omega_operator.api_error import ApiError
from omega_operator.health_report import ProbeOutcome, ProbeResult

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
HEALTH_PROBE_DURATION = Histogram(
    "omega_operator_health_probe_duration_seconds",
    "Time of one /health probe (answered or not)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REFRESH_PERIOD = Histogram(
    "omega_operator_refresh_period_seconds",
    "Time between the starts of two consecutive refreshes (probe rounds) of one OmegaVLM",
    buckets=(1, 2, 4, 6, 8, 10, 11, 12, 14, 17, 20, 30, 60, 120),
)
PROBE_FAILURE_REASONS = ("timeout", "connection", "proxy", "no_ip", "no_health_body")
HEALTH_PROBE_FAILURES = Counter(
    "omega_operator_health_probe_failures",
    "/health probes that got no health report, by reason: timeout, connection (refused/reset), proxy "
    "(the API server's pod proxy could not reach the pod), no_ip (the pod has no IP yet), "
    "no_health_body (an HTTP answer that is not a /health body)",
    ["reason"],
)
FALLBACKS = Counter("omega_operator_fallbacks", "Rollbacks from the flash to the sdpa variant", ["reason"])
ROLLBACK_SCOPES = ("fleet", "node")
ROLLBACKS = Counter(
    "omega_operator_rollbacks",
    "Rollbacks flash -> sdpa by scope: fleet (the OmegaVLM's whole Deployment) or node (the pods of "
    "one node only; 0 while the operator only rolls back whole fleets)",
    ["scope"],
)
RECONCILE_ERROR_KINDS = (
    "invalid_spec",
    "api_conflict",
    "api_forbidden",
    "api_not_found",
    "api_unavailable",
    "api_other",
    "unexpected",
)
RECONCILE_ERRORS = Counter(
    "omega_operator_reconcile_errors",
    "Reconciles that failed, by kind: invalid_spec (the spec, or the API server's 422 on it), "
    "api_conflict (409), api_forbidden (401/403), api_not_found (404), api_unavailable (connection "
    "failure, 429, 5xx), api_other (other API errors), unexpected (an exception that is no API error)",
    ["kind"],
)
OMEGAVLMS = Gauge("omega_operator_omegavlms", "OmegaVLMs per phase", ["phase"])
OMEGAVLM_INFO = Gauge(
    "omega_operator_omegavlm_info",
    "One series per OmegaVLM (=1) with its phase and active attention backend",
    ["namespace", "name", "phase", "attention"],
)

OMEGAVLM_REPLICAS = Gauge(
    "omega_operator_omegavlm_replicas",
    "Server pods an OmegaVLM asks for (spec.replicas, its default applied)",
    ["namespace", "name"],
)
OMEGAVLM_READY_REPLICAS = Gauge(
    "omega_operator_omegavlm_ready_replicas",
    "Ready server pods of an OmegaVLM (status.readyReplicas)",
    ["namespace", "name"],
)
CONDITION_STATUSES = ("True", "False", "Unknown")
OMEGAVLM_CONDITION = Gauge(
    "omega_operator_omegavlm_condition",
    "An OmegaVLM's status conditions: 1 on the series of the condition's status, 0 on the other two",
    ["namespace", "name", "type", "status"],
)

for _reason in PROBE_FAILURE_REASONS:
    HEALTH_PROBE_FAILURES.labels(_reason)
for _scope in ROLLBACK_SCOPES:
    ROLLBACKS.labels(_scope)
for _kind in RECONCILE_ERROR_KINDS:
    RECONCILE_ERRORS.labels(_kind)

PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed")

# (namespace, name) -> (phase, attention) as last exported.
_known: dict[tuple[str, str], tuple[str, str]] = {}
# (namespace, name) -> condition types exported
_conditions: dict[tuple[str, str], set[str]] = {}


def probe_failure_reason(r: ProbeResult) -> str | None:
    """Why a probe got no health report (None when it got one, ready or not)."""
    if r.outcome is ProbeOutcome.REPORT:
        return None
    if r.outcome is ProbeOutcome.HTTP_STATUS:
        return "no_health_body"
    error = r.error or ""
    if error.startswith("pod has no IP"):
        return "no_ip"
    if error.startswith("timed out"):
        return "timeout"
    return "proxy" if r.http_status is not None else "connection"


def observe_probe(r: ProbeResult) -> None:
    """Count one /health probe: its result, its time, and why it failed if it did."""
    HEALTH_PROBES.labels(r.metric_result).inc()
    HEALTH_PROBE_DURATION.observe(r.duration_s)
    reason = probe_failure_reason(r)
    if reason is not None:
        HEALTH_PROBE_FAILURES.labels(reason).inc()


def count_rollback(reason: str, scope: str = "fleet") -> None:
    """Count one rollback flash -> sdpa: ``omega_operator_fallbacks_total{reason}`` and
    ``omega_operator_rollbacks_total{scope}`` (``fleet`` or ``node``)."""
    if scope not in ROLLBACK_SCOPES:
        raise ValueError(f"rollback scope {scope!r} is none of {ROLLBACK_SCOPES}")
    FALLBACKS.labels(reason).inc()
    ROLLBACKS.labels(scope).inc()


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of a failed reconcile's exception."""
    if not isinstance(exc, ApiError):
        return "unexpected"
    if exc.status == 409:
        return "api_conflict"
    if exc.status in (401, 403):
        return "api_forbidden"
    if exc.status == 404:
        return "api_not_found"
    if exc.status == 422:
        return "invalid_spec"
    if exc.status in (0, 429) or exc.status >= 500:
        return "api_unavailable"
    return "api_other"


def count_error(kind: str) -> None:
    """Count one failed reconcile of that kind (``RECONCILE_ERROR_KINDS``)."""
    RECONCILE_ERRORS.labels(kind).inc()


def observe_status(
    namespace: str, name: str, replicas: int, ready: int, conditions: Iterable[Mapping[str, Any]]
) -> None:
    """Record one OmegaVLM's asked-for and Ready replicas and its conditions (kube-state-metrics style)."""
    OMEGAVLM_REPLICAS.labels(namespace, name).set(replicas)
    OMEGAVLM_READY_REPLICAS.labels(namespace, name).set(ready)
    seen = _conditions.setdefault((namespace, name), set())
    for cond in conditions:
        kind, status = str(cond.get("type") or ""), str(cond.get("status") or "Unknown")
        if not kind:
            continue
        seen.add(kind)
        for s in CONDITION_STATUSES:
            OMEGAVLM_CONDITION.labels(namespace, name, kind, s).set(1 if s == status else 0)


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
    """Drop every series of a deleted OmegaVLM."""
    old = _known.pop((namespace, name), None)
    if old is not None:
        OMEGAVLM_INFO.remove(namespace, name, *old)
        _refresh_phases()
    for gauge in (OMEGAVLM_REPLICAS, OMEGAVLM_READY_REPLICAS):
        with contextlib.suppress(KeyError):  # never recorded
            gauge.remove(namespace, name)
    for kind in _conditions.pop((namespace, name), set()):
        for s in CONDITION_STATUSES:
            OMEGAVLM_CONDITION.remove(namespace, name, kind, s)


def _refresh_phases() -> None:
    tally = _Tally(phase for phase, _ in _known.values())
    for phase in PHASES:
        OMEGAVLMS.labels(phase).set(tally.get(phase, 0))


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Expose /metrics on that port (0 = do not serve)."""
    if port:
        start_http_server(port, registry=registry)
