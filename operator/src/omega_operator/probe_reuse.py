"""When a reconcile between probe rounds may reuse the last round's /health results. Pure.

Pods are probed on the refresh loop's rounds and on spec changes; a reconcile that a child or pod
event triggers reuses the last round, unless a pod is news to it (then it probes at once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omega_operator.health_report import ProbeResult


def reusable_probes(
    earlier: dict[str, ProbeResult] | None, pods: Sequence[Mapping[str, Any]]
) -> dict[str, ProbeResult] | None:
    """The last probe round, or None when it is stale for these pods.

    Stale: a live pod with an IP that the round did not probe (a new process has none yet), or a
    pod the kubelet now reports Ready whose last /health was not ready (so
    `status.attention.active` follows readiness at once instead of one probe interval later).
    """
    if earlier is None:
        return None
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or not status.get("podIP"):
            continue
        result = earlier.get(str(meta.get("name")))
        if result is None:
            return None
        ready = any(
            cond.get("type") == "Ready" and cond.get("status") == "True"
            for cond in status.get("conditions") or []
        )
        if ready and not result.ready:
            return None
    return earlier
