"""Pure placement: an OmegaVLM spec -> where its pods may run (the GPU node requirement ANDed into the
user's affinity, the GPU toleration, the nvidia.com/gpu limit, the scheduling fields passed through)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omega_operator.api.defaults import DEFAULT_GPU_COUNT
from omega_operator.api.models import OmegaVLMSpec
from omega_operator.api.placement import (
    DEFAULT_GPU_SELECTOR,
    GPU_FAMILY_LABEL,
    GPU_PRODUCT_LABEL,
    HOPPER_FAMILY,
)

GPU_RESOURCE = "nvidia.com/gpu"
HOSTNAME_LABEL = "kubernetes.io/hostname"
GPU_TAINT_KEY = "nvidia.com/gpu"


def gpu_count(spec: OmegaVLMSpec) -> int:
    return (spec.gpu.count if spec.gpu and spec.gpu.count else None) or DEFAULT_GPU_COUNT


def gpu_selector(spec: OmegaVLMSpec) -> str:
    return (spec.gpu.selector if spec.gpu else None) or DEFAULT_GPU_SELECTOR


def gpu_toleration() -> dict[str, Any]:
    return {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}


def gpu_node_requirement(spec: OmegaVLMSpec) -> dict[str, Any] | None:
    """The GPU node-selector requirement: the products given, else the Hopper family; None for
    selector none (only the nvidia.com/gpu limit places the pods)."""
    if gpu_selector(spec) == "none":
        return None
    if spec.gpu and spec.gpu.products:
        return {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": list(spec.gpu.products)}
    return {"key": GPU_FAMILY_LABEL, "operator": "In", "values": [HOPPER_FAMILY]}


def affinity(spec: OmegaVLMSpec, exclude_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """The user's affinity with our requirements ANDed into each of its node selector terms: the GPU
    nodes, and ``kubernetes.io/hostname NotIn exclude_nodes`` (the nodes flash-attn failed on,
    :mod:`omega_operator.fallback.nodes`)."""
    ours = [r for r in (gpu_node_requirement(spec), _not_on(exclude_nodes)) if r is not None]
    user = dict(spec.affinity or {})
    if not ours:
        return user
    node_aff = dict(user.get("nodeAffinity") or {})
    required = dict(node_aff.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = [dict(t) for t in required.get("nodeSelectorTerms") or []] or [{}]
    for term in terms:
        term["matchExpressions"] = [*(term.get("matchExpressions") or []), *ours]
    required["nodeSelectorTerms"] = terms
    node_aff["requiredDuringSchedulingIgnoredDuringExecution"] = required
    user["nodeAffinity"] = node_aff
    return user


def _not_on(nodes: Sequence[str]) -> dict[str, Any] | None:
    return {"key": HOSTNAME_LABEL, "operator": "NotIn", "values": sorted(set(nodes))} if nodes else None


def scheduling(spec: OmegaVLMSpec, selector: dict[str, str]) -> dict[str, Any]:
    """runtimeClassName, priorityClassName and topologySpreadConstraints of the pod, as given; a
    spread constraint without labelSelector gets ``selector`` (this OmegaVLM's pod selector)."""
    out: dict[str, Any] = {}
    if spec.runtime_class_name:
        out["runtimeClassName"] = spec.runtime_class_name
    if spec.priority_class_name:
        out["priorityClassName"] = spec.priority_class_name
    if spec.topology_spread_constraints:
        out["topologySpreadConstraints"] = [
            {"labelSelector": {"matchLabels": dict(selector)}, **c} for c in spec.topology_spread_constraints
        ]
    return out


def tolerations(spec: OmegaVLMSpec) -> list[dict[str, Any]]:
    return [
        gpu_toleration(),
        *(t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or []),
    ]


def container_resources(spec: OmegaVLMSpec) -> dict[str, Any]:
    res = spec.resources
    limits = {k: str(v) for k, v in ((res.limits if res else None) or {}).items()}
    requests = {k: str(v) for k, v in ((res.requests if res else None) or {}).items()}
    limits[GPU_RESOURCE] = str(gpu_count(spec))
    out: dict[str, Any] = {"limits": limits}
    if requests:
        out["requests"] = requests
    return out
