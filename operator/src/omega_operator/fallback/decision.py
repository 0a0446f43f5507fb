"""The fallback decision itself: keep, roll back, report degraded, or reset. Pure; the clock comes in.

The rules are in :mod:`omega_operator.fallback`; ``now`` is an argument.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from omega_operator.conditions import rfc3339
from omega_operator.fallback import nodes
from omega_operator.fallback.findings import (
    FLASH_REASONS,
    PodFinding,
    Reason,
    clip,
    pod_findings,
    rank_problems,
)
from omega_operator.fallback.inputs import FallbackSpec, PodView
from omega_operator.fallback.nodes import BadNode
from omega_operator.health_report import ProbeResult

RETRY_ANNOTATION = "vlm.omega.io/retry-flash"
EVENT_REASON = "FlashAttentionFallback"
SDPA = "sdpa"


class Action(StrEnum):
    """What the operator must do."""

    KEEP = "keep"  # nothing changes on the fallback front
    ROLLBACK = "rollback"  # record the fallback, move the Deployment to sdpa, Event + metric
    DEGRADED = "degraded"  # flash failed but fallback.enabled is false: report, do not roll back
    RESET = "reset"  # an old fallback no longer applies (flash image/attention changed, retry): try flash
    EXCLUDE = "exclude-nodes"  # flash failed on some nodes only: list them, keep flash pods off them


@dataclass(frozen=True)
class FallbackRecord:
    """``status.attention.fallback``: when, from which image, why, which pod and node."""

    at: str
    from_image: str
    to_image: str
    reason: str
    message: str
    pod: str
    node: str | None
    attention: str  # the spec's attention when it happened (part of the sticky key)

    def to_status(self) -> dict[str, Any]:
        """camelCase dict for the status."""
        return {
            "at": self.at,
            "fromImage": self.from_image,
            "toImage": self.to_image,
            "reason": self.reason,
            "message": self.message,
            "pod": self.pod,
            "node": self.node,
            "attention": self.attention,
        }

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> FallbackRecord | None:
        """Read it back (None when absent or empty)."""
        if not data or not data.get("fromImage"):
            return None
        return cls(
            at=str(data.get("at") or ""),
            from_image=str(data.get("fromImage")),
            to_image=str(data.get("toImage") or ""),
            reason=str(data.get("reason") or Reason.FLASH_LOAD_FAILED),
            message=str(data.get("message") or ""),
            pod=str(data.get("pod") or ""),
            node=data.get("node"),
            # Records written without it predate the field: treat them as made for ``auto``.
            attention=str(data.get("attention") or "auto"),
        )

    def applies_to(self, spec: FallbackSpec) -> bool:
        """Still binding: same flash image and same attention setting."""
        return self.from_image == spec.flash_image and self.attention == spec.attention


@dataclass(frozen=True)
class FlashErrorSummary:
    """One distinct flash error and the pods that reported it."""

    message: str
    pods: tuple[str, ...]

    def to_status(self) -> dict[str, Any]:
        """camelCase dict for ``status.attention.flashErrors``."""
        return {"message": self.message, "pods": list(self.pods), "count": len(self.pods)}


@dataclass(frozen=True)
class AttentionSummary:
    """What the pods really run, from ready pods' /health ``attn``."""

    active: str  # one backend name, "mixed", or "unknown" when no ready pod has reported
    counts: Mapping[str, int] = field(default_factory=dict)
    unknown: int = 0  # pods without a ready health report (loading, unreachable, not started)


@dataclass(frozen=True)
class Decision:
    """The outcome. ``attention`` is what the Deployment must be built with."""

    action: Action
    attention: str
    fallback: FallbackRecord | None
    retry_flash: str | None
    condition_status: bool  # FlashAttentionDegraded
    reason: str  # FlashAttentionDegraded reason
    message: str
    summary: AttentionSummary
    findings: tuple[PodFinding, ...] = ()
    flash_errors: tuple[FlashErrorSummary, ...] = ()
    bad_nodes: tuple[BadNode, ...] = ()  # status.attention.badNodes (fallback.nodes)
    new_bad_nodes: tuple[BadNode, ...] = ()  # listed by this decision (an Event each)

    @property
    def excluded_nodes(self) -> tuple[str, ...]:
        """Nodes the flash pods must be kept off (required node affinity NotIn); none on sdpa."""
        return tuple(n.node for n in self.bad_nodes) if self.variant == "flash" else ()

    @property
    def problems(self) -> tuple[PodFinding, ...]:
        """Non-flash findings, most severe first (for the Ready/phase reason)."""
        return rank_problems(self.findings)

    @property
    def variant(self) -> str:
        """The image variant the Deployment must run: ``flash`` or ``sdpa``."""
        return "sdpa" if self.attention == SDPA else "flash"

    def status_attention(self) -> dict[str, Any]:
        """The keys of ``status.attention`` this decision owns (merge-patch shape: None deletes)."""
        return {
            "active": self.summary.active,
            # Ready pods per backend, and ``unknown``: pods without a ready /health report.
            "counts": {**self.summary.counts, "unknown": self.summary.unknown},
            "flashErrors": [e.to_status() for e in self.flash_errors],
            "fallback": self.fallback.to_status() if self.fallback else None,
            "retryFlash": self.retry_flash,
            "badNodes": [n.to_status() for n in self.bad_nodes] or None,
        }


def decide(
    spec: FallbackSpec,
    status_attention: Mapping[str, Any] | None,
    pods: Iterable[PodView],
    probes: Mapping[str, ProbeResult],
    *,
    annotations: Mapping[str, str] | None = None,
    now: datetime,
) -> Decision:
    """Decide keep / rollback / degraded / reset (the rules: :mod:`omega_operator.fallback`)."""
    st = status_attention or {}
    record = FallbackRecord.from_status(st.get("fallback"))
    consumed = st.get("retryFlash") or None
    live = sorted((p for p in pods if not p.deleting), key=lambda p: p.name)
    findings = tuple(f for p in live for f in pod_findings(p, spec, probes.get(p.name), now))
    summary = summarize_attention(live, probes)
    flash_errors = summarize_flash_errors(findings)
    # The retry annotation: a new value is consumed once.
    wanted = (annotations or {}).get(RETRY_ANNOTATION) or None
    retry = wanted is not None and wanted != consumed
    retry_value = wanted if retry else consumed
    listed = () if retry else nodes.recorded(st, spec)

    def make(
        action: Action,
        attention: str,
        fallback: FallbackRecord | None,
        degraded: bool,
        reason: str,
        message: str,
        bad: tuple[BadNode, ...] = listed,
        new_bad: tuple[BadNode, ...] = (),
    ) -> Decision:
        return Decision(
            action=action,
            attention=attention,
            fallback=fallback,
            retry_flash=retry_value,
            condition_status=degraded,
            reason=reason,
            message=clip(message),
            summary=summary,
            findings=findings,
            flash_errors=flash_errors,
            bad_nodes=bad,
            new_bad_nodes=new_bad,
        )

    if not spec.wants_flash:
        # An old record is dropped (fallback None), but nothing is retried: KEEP, not RESET.
        msg = f"attention is {spec.attention}: the flash variant is not used"
        return make(Action.KEEP, SDPA, None, False, Reason.SDPA_REQUESTED, msg, bad=())

    if record is not None:
        if record.applies_to(spec) and not retry:
            return make(Action.KEEP, SDPA, record, True, record.reason, _fallback_message(record))
        if retry:
            why = f"retry requested ({RETRY_ANNOTATION}={wanted})"
        elif record.from_image != spec.flash_image:
            why = f"flash image changed from {record.from_image} to {spec.flash_image}"
        else:
            why = f"attention changed from {record.attention} to {spec.attention}"
        msg = f"trying the flash variant again: {why}"
        return make(Action.RESET, spec.attention, None, False, Reason.RETRYING_FLASH, msg, bad=())

    failure = next((f for f in findings if f.is_flash), None)
    if failure is None and not listed:
        msg = "no flash-attention failure seen"
        return make(Action.KEEP, spec.attention, None, False, Reason.NOT_DEGRADED, msg)
    if failure is not None and not spec.enabled:
        msg = f"fallback disabled; pod {failure.pod}: {failure.message}"
        return make(Action.DEGRADED, spec.attention, None, True, failure.reason, msg)
    fleet_why: str | None = None
    bad = listed
    if failure is None or all(nodes.is_node_scoped(f) for f in findings if f.is_flash):
        # Per-node memory (fallback.nodes): list the nodes, and keep the fleet on flash while it can.
        bad, new_bad = nodes.merge(listed, findings, spec, now)
        healthy = nodes.healthy_flash_nodes(live, probes, spec, (n.node for n in bad))
        fleet_why = nodes.fleet_must_fall_back(bad, healthy, live, spec)
        if fleet_why is None:
            action = Action.EXCLUDE if new_bad else Action.KEEP
            msg = _nodes_message(bad, healthy)
            return make(action, spec.attention, None, True, Reason.NODE_FAILED, msg, bad=bad, new_bad=new_bad)
        if failure is None:  # the scheduler has no other node: fall back with the first node's error
            first = bad[0]
            why = Reason(first.reason) if first.reason in FLASH_REASONS else Reason.FLASH_LOAD_FAILED
            failure = PodFinding(first.pod, first.node, why, first.message)
    if not spec.enabled:
        msg = f"fallback disabled; {fleet_why or 'flash failed'}; pod {failure.pod}: {failure.message}"
        return make(Action.DEGRADED, spec.attention, None, True, failure.reason, msg, bad=bad)
    new = FallbackRecord(
        at=rfc3339(now),
        from_image=spec.flash_image,
        to_image=spec.sdpa_image,
        reason=failure.reason,
        message=clip(f"{fleet_why}; {failure.message}") if fleet_why else failure.message,
        pod=failure.pod,
        node=failure.node,
        attention=spec.attention,
    )
    return make(Action.ROLLBACK, SDPA, new, True, new.reason, _fallback_message(new), bad=bad)


def _nodes_message(bad: tuple[BadNode, ...], healthy: frozenset[str]) -> str:
    where = ", ".join(f"{n.node} ({n.message})" for n in bad)
    serving = f"; flash runs on {', '.join(sorted(healthy))}" if healthy else "; trying another node"
    return clip(f"flash-attn failed on node(s) {where}: flash pods are kept off them{serving}")


def _fallback_message(r: FallbackRecord) -> str:
    where = f"pod {r.pod}" + (f" on node {r.node}" if r.node else "")
    return clip(f"rolled back to {r.to_image or 'the sdpa image'} from {r.from_image}; {where}: {r.message}")


def summarize_attention(pods: Iterable[PodView], probes: Mapping[str, ProbeResult]) -> AttentionSummary:
    """All one backend, ``mixed`` (with counts), or ``unknown`` when no ready pod reported."""
    counts: Counter[str] = Counter()
    unknown = 0
    for p in pods:
        if p.deleting:
            continue
        r = probes.get(p.name)
        if r is not None and r.report is not None and r.report.ready and r.report.attn:
            counts[r.report.attn] += 1
        else:
            unknown += 1
    if not counts:
        active = "unknown"
    elif len(counts) == 1:
        active = next(iter(counts))
    else:
        active = "mixed"
    return AttentionSummary(active=active, counts=dict(sorted(counts.items())), unknown=unknown)


def summarize_flash_errors(findings: Iterable[PodFinding], limit: int = 5) -> tuple[FlashErrorSummary, ...]:
    """Distinct flash errors with the pods that reported each (at most ``limit``, most pods first)."""
    by_msg: dict[str, list[str]] = {}
    for f in findings:
        if f.is_flash:
            by_msg.setdefault(f.message, []).append(f.pod)
    ordered = sorted(by_msg.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return tuple(FlashErrorSummary(m, tuple(sorted(set(p)))) for m, p in ordered[:limit])
