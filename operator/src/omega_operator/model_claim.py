"""Whether a pvc:// model claim can serve every replica: ReadWriteOnce attaches to one node. Pure.

A `pvc://` claim is mounted read-only into every pod. A ReadWriteOnce volume attaches to one node
at a time, so once the pods are spread over several nodes, those away from the first wait on the
attach/detach controller's Multi-Attach error; ReadWriteOncePod admits one pod in all. Neither
shows in the Deployment's counters, so the status says it (a pod problem that names the fields).
"""

from __future__ import annotations

from typing import Any

from omega_operator import builders as b
from omega_operator.api.models import OmegaVLMSpec

REASON = "ModelClaimReadWriteOnce"
SINGLE_NODE = {"ReadWriteOnce", "ReadWriteOncePod"}


def claim_name(spec: OmegaVLMSpec) -> str | None:
    """The claim of a pvc:// model.uri (None for hf:// and file://)."""
    return b.model_volume(spec.model.uri).claim


def problem(spec: OmegaVLMSpec, access_modes: list[str] | None, pods: list[dict[str, Any]]) -> str | None:
    """The message when the claim's access modes cannot serve these pods, else None.

    `access_modes` are the claim's (spec.accessModes; None when the claim is not known yet).
    """
    claim = claim_name(spec)
    if claim is None or not access_modes or not set(access_modes) <= SINGLE_NODE or b.replicas(spec) <= 1:
        return None
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    nodes = {str(n) for p in live if (n := (p.get("spec") or {}).get("nodeName"))}
    once_pod = access_modes == ["ReadWriteOncePod"]
    if not once_pod and len(nodes) <= 1:
        return None  # every pod on one node: a ReadWriteOnce volume serves them all
    where = "one pod" if once_pod else "one node"
    return (
        f"spec.model.uri pvc://{claim}: the claim is {'/'.join(access_modes)} and attaches to {where} "
        f"at a time, so spec.replicas {b.replicas(spec)} pods on nodes {', '.join(sorted(nodes))} wait "
        "on a Multi-Attach error; use a ReadOnlyMany or ReadWriteMany claim, or spec.replicas 1"
    )
