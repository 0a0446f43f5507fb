"""Whether a model claim can serve every replica: ReadWriteOnce attaches to one node. Pure.

A `pvc://` claim is mounted read-only into every pod, a spec.model.cache claim read-write. A ReadWriteOnce volume attaches to one node
at a time, so once the pods are spread over several nodes, those away from the first wait on the
attach/detach controller's Multi-Attach error; ReadWriteOncePod admits one pod in all. Neither
shows in the Deployment's counters, so the status says it (a pod problem that names the fields).
"""

from __future__ import annotations

from typing import Any

from omega_operator import builders as b
from omega_operator import model_cache
from omega_operator.api.models import OmegaVLMSpec

REASON = "ModelClaimReadWriteOnce"
SINGLE_NODE = {"ReadWriteOnce", "ReadWriteOncePod"}


def claim_name(spec: OmegaVLMSpec, name: str = "") -> str | None:
    """The claim of a pvc:// model.uri, else the spec.model.cache claim of OmegaVLM `name` (None
    for hf:// without a cache and file://)."""
    return b.model_volume(spec.model.uri).claim or model_cache.claim_name(spec, name)


def problem(
    spec: OmegaVLMSpec, access_modes: list[str] | None, pods: list[dict[str, Any]], name: str = ""
) -> str | None:
    """The message when the claim's access modes cannot serve these pods, else None.

    `access_modes` are the claim's (spec.accessModes; None when the claim is not known yet).
    """
    claim = claim_name(spec, name)
    if claim is None or not access_modes or not set(access_modes) <= SINGLE_NODE or b.replicas(spec) <= 1:
        return None
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    nodes = {str(n) for p in live if (n := (p.get("spec") or {}).get("nodeName"))}
    once_pod = access_modes == ["ReadWriteOncePod"]
    if not once_pod and len(nodes) <= 1:
        return None  # every pod on one node: a ReadWriteOnce volume serves them all
    where = "one pod" if once_pod else "one node"
    field, fix = (
        (f"spec.model.uri pvc://{claim}", "a ReadOnlyMany or ReadWriteMany claim")
        if b.model_volume(spec.model.uri).claim
        else (f"spec.model.cache claim {claim}", "a ReadWriteMany cache (spec.model.cache.accessMode)")
    )
    return (
        f"{field}: the claim is {'/'.join(access_modes)} and attaches to {where} "
        f"at a time, so spec.replicas {b.replicas(spec)} pods on nodes {', '.join(sorted(nodes))} wait "
        f"on a Multi-Attach error; use {fix}, or spec.replicas 1"
    )
