"""The ``HealthProbed`` condition: did every running pod answer ``GET /health`` lately. Pure; the clock
comes in.

True when every running pod (phase Running, an IP, not terminating) answered with a /health body
(200 or 503: the body always comes) within the last ``WINDOW_INTERVALS`` probe intervals; a pod
that started (``status.startTime``) less than that long ago has that long to answer. False otherwise, with the
counts and the first error ("2/3 pods unreachable: pod a: timed out after 3s"), so an operator
that cannot reach the pods (a default-deny NetworkPolicy, STRICT mTLS, a private control plane)
says so instead of reporting "no flash-attention failure seen" for pods it never saw.

:class:`ProbeLedger` remembers when each pod last answered (in memory, wall-clock seconds). After
an operator restart a pod that has not answered yet counts from its own start, so a pod that was
unreachable before the restart is so at once after it (no flip, no write).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from omega_operator.health_report import ProbeOutcome, ProbeResult

HEALTH_PROBED = "HealthProbed"
ALL_ANSWERED = "AllPodsAnswered"
NO_RUNNING_PODS = "NoRunningPods"
PODS_UNREACHABLE = "PodsUnreachable"
#: A pod is unreachable once it has not answered for this many probe intervals.
WINDOW_INTERVALS = 3


@dataclass(frozen=True)
class Probed:
    """The condition as decided: ``ok`` (status True), reason, message, and the counts."""

    ok: bool
    reason: str
    message: str
    running: int = 0
    unreachable: int = 0


@dataclass
class ProbeLedger:
    """When each pod of each OmegaVLM last answered /health (wall-clock seconds since the epoch)."""

    interval: float
    answered: dict[str, dict[str, float]] = field(default_factory=dict)  # uid -> pod -> last answer
    seen: dict[str, dict[str, float]] = field(default_factory=dict)  # uid -> pod -> its start

    def observe(
        self,
        uid: str,
        pods: Sequence[Mapping[str, Any]],
        probes: Mapping[str, ProbeResult],
        now: float,
    ) -> Probed:
        """Record this round's answers and decide the condition for these pods."""
        live = {str((p.get("metadata") or {}).get("name")): p for p in pods if _running(p)}
        running = list(live)
        answered = self.answered.setdefault(uid, {})
        seen = self.seen.setdefault(uid, {})
        for name in running:
            seen.setdefault(name, _started(live[name], now))
            r = probes.get(name)
            if r is not None and r.outcome is ProbeOutcome.REPORT:
                answered[name] = now
        for book in (answered, seen):  # pods that are gone are forgotten
            for name in set(book) - set(running):
                del book[name]
        window = WINDOW_INTERVALS * self.interval
        silent = [n for n in running if now - answered.get(n, seen[n]) > window]
        if not running:
            return Probed(True, NO_RUNNING_PODS, "no running pod to probe")
        if not silent:
            return Probed(
                True, ALL_ANSWERED, f"{len(running)}/{len(running)} pods answered /health", len(running)
            )
        first = silent[0]
        result = probes.get(first)
        why = (result.error if result is not None else None) or (
            f"HTTP {result.http_status} without a /health body"
            if result is not None and result.http_status
            else "not probed"
        )
        message = (
            f"{len(silent)}/{len(running)} pods unreachable for more than {window:g}s "
            f"({WINDOW_INTERVALS} probe intervals): pod {first}: {why}"
        )
        return Probed(False, PODS_UNREACHABLE, message, len(running), len(silent))

    def forget(self, uid: str) -> None:
        """A deleted OmegaVLM."""
        self.answered.pop(uid, None)
        self.seen.pop(uid, None)


def _started(pod: Mapping[str, Any], now: float) -> float:
    """The pod's ``status.startTime`` (epoch seconds); ``now`` when it has none."""
    value = (pod.get("status") or {}).get("startTime")
    try:
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else now
    except ValueError:
        return now


def _running(pod: Mapping[str, Any]) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    return (
        status.get("phase") == "Running" and bool(status.get("podIP")) and not meta.get("deletionTimestamp")
    )
