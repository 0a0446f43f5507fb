"""Where the server pods may run: the spec.gpu model and the GPU node labels it selects on.

The default placement is every Hopper data-centre GPU, selected by GPU Feature Discovery's
`nvidia.com/gpu.family=hopper` label (GFD derives it from the CUDA compute capability, 9.x).
A family selects every Hopper part, named or yet to come (H100 SXM/PCIe/NVL, H200, H200 NVL,
GH200, H800, H20), with no product list to keep up to date, and Hopper has no consumer parts.
`spec.gpu.products` narrows the choice to GFD product names (`nvidia.com/gpu.product`);
`spec.gpu.selector: none` drops every GPU label (clusters without GFD): only the
`nvidia.com/gpu` limit places the pods.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from omega_operator.api import defaults as d
from omega_operator.api.base import ApiModel, open_object

GPU_FAMILY_LABEL = "nvidia.com/gpu.family"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
HOPPER_FAMILY = "hopper"

# GPU Feature Discovery's product names (nvidia.com/gpu.product: the NVML name, spaces as dashes)
# of the Hopper data-centre GPUs: the examples of spec.gpu.products (not a default).
H100_PRODUCTS = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"]
HOPPER_PRODUCTS = [*H100_PRODUCTS, "NVIDIA-H200", "NVIDIA-H200-NVL", "NVIDIA-GH200-480GB"]

GpuSelector = Literal["featureDiscovery", "none"]
DEFAULT_GPU_SELECTOR: GpuSelector = "featureDiscovery"


class GpuSpec(ApiModel):
    """GPUs per pod and the GPU nodes the pods may run on."""

    count: int | None = Field(
        default=None,
        ge=1,
        le=8,
        description=f"GPUs per pod (limits nvidia.com/gpu). {d.describe(d.DEFAULT_GPU_COUNT)}",
    )
    selector: GpuSelector | None = Field(
        default=None,
        description=(
            "How pods find GPU nodes: `featureDiscovery` (required node affinity on GPU Feature "
            f"Discovery labels: {GPU_FAMILY_LABEL}={HOPPER_FAMILY}, or {GPU_PRODUCT_LABEL} in "
            "spec.gpu.products) or `none` (no GPU label; only the nvidia.com/gpu limit, for clusters "
            f"without GPU Feature Discovery). {d.describe(DEFAULT_GPU_SELECTOR)}"
        ),
    )
    products: list[Annotated[str, Field(min_length=1, max_length=63)]] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description=(
            f"Narrow placement to these values of the node label {GPU_PRODUCT_LABEL} (GPU Feature "
            f"Discovery), e.g. {', '.join(HOPPER_PRODUCTS)}. Unset: every node with "
            f"{GPU_FAMILY_LABEL}={HOPPER_FAMILY} (every Hopper data-centre GPU). Not with selector none."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class PodScheduling(ApiModel):
    """Scheduling fields of the pod that pass through unchanged (part of OmegaVLMSpec)."""

    runtime_class_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="RuntimeClass of the server pods, e.g. `nvidia` (the NVIDIA container runtime's).",
    )
    priority_class_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PriorityClass of the server pods (their preemption order among GPU workloads).",
    )
    topology_spread_constraints: (
        list[
            Annotated[
                dict[str, Any],
                open_object(
                    "A Kubernetes TopologySpreadConstraint; one without labelSelector selects this "
                    "OmegaVLM's pods."
                ),
            ]
        ]
        | None
    ) = Field(
        default=None,
        max_length=16,
        description="How the server pods spread over zones or nodes (Kubernetes TopologySpreadConstraints).",
    )
