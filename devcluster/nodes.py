"""Fake GPU nodes: their specs and the Node/Lease objects that represent them (pure functions)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from devcluster.settings import KUBE_RELEASE

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class GpuModel:
    """What GPU Feature Discovery reports for one GPU product."""

    product: str
    family: str
    compute_major: int
    compute_minor: int
    memory_mib: int


H100_SXM = GpuModel("NVIDIA-H100-80GB-HBM3", "hopper", 9, 0, 81559)
H100_PCIE = GpuModel("NVIDIA-H100-PCIe", "hopper", 9, 0, 81559)
H100_NVL = GpuModel("NVIDIA-H100-NVL", "hopper", 9, 0, 95830)
H200 = GpuModel("NVIDIA-H200", "hopper", 9, 0, 143771)
A100_SXM = GpuModel("NVIDIA-A100-SXM4-80GB", "ampere", 8, 0, 81920)
GPU_MODELS = {m.product: m for m in (H100_SXM, H100_PCIE, H100_NVL, H200, A100_SXM)}


@dataclass(frozen=True)
class NodeSpec:
    """One fake node. ``gpu`` None means a CPU-only node."""

    name: str
    gpu: GpuModel | None = None
    gpu_count: int = 0
    cpu: str = "32"
    memory: str = "256Gi"
    extra_labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (kept in the cluster state file)."""
        return {
            "name": self.name,
            "gpu": self.gpu.product if self.gpu else None,
            "gpu_count": self.gpu_count,
            "cpu": self.cpu,
            "memory": self.memory,
            "extra_labels": dict(self.extra_labels),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeSpec:
        """Inverse of :meth:`to_dict`."""
        gpu = GPU_MODELS[d["gpu"]] if d.get("gpu") else None
        return cls(d["name"], gpu, d.get("gpu_count", 0), d.get("cpu", "32"), d.get("memory", "256Gi"),
                   dict(d.get("extra_labels") or {}))  # fmt: skip


DEFAULT_NODES: tuple[NodeSpec, ...] = (
    NodeSpec("h100-sxm-0", H100_SXM, 8, cpu="208", memory="2015Gi"),
    NodeSpec("h100-pcie-0", H100_PCIE, 2, cpu="64", memory="512Gi"),
    NodeSpec("h200-0", H200, 8, cpu="192", memory="2015Gi"),
    NodeSpec("a100-0", A100_SXM, 8, cpu="128", memory="1024Gi"),
    NodeSpec("cpu-0", None, 0, cpu="16", memory="64Gi"),
)


def node_labels(spec: NodeSpec) -> dict[str, str]:
    """Kubernetes well-known labels plus the GPU Feature Discovery labels of a real node."""
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
        "devcluster.omega.io/fake": "true",
    }
    if spec.gpu is not None and spec.gpu_count > 0:
        g = spec.gpu
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": g.product,
            "nvidia.com/gpu.family": g.family,
            "nvidia.com/gpu.count": str(spec.gpu_count),
            "nvidia.com/gpu.memory": str(g.memory_mib),
            "nvidia.com/gpu.compute.major": str(g.compute_major),
            "nvidia.com/gpu.compute.minor": str(g.compute_minor),
            "nvidia.com/gpu.machine": "devcluster-fake",
            "nvidia.com/cuda.driver.major": "550",
            "nvidia.com/cuda.runtime.major": "12",
            "nvidia.com/cuda.runtime.minor": "4",
            "nvidia.com/mig.capable": "true" if g.family in ("hopper", "ampere") else "false",
        }
    return labels | spec.extra_labels


def now_iso() -> str:
    """RFC 3339 UTC timestamp with seconds, as Kubernetes writes them."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """MicroTime (for Lease renewTime)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_object(spec: NodeSpec) -> dict[str, Any]:
    """The Node as registered (metadata + spec); status goes through :func:`node_status`."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": node_labels(spec)},
        "spec": {"taints": [dict(GPU_TAINT)] if spec.gpu is not None and spec.gpu_count > 0 else []},
    }


def node_status(
    spec: NodeSpec, host_ip: str, heartbeat: str, since: str, kubelet_port: int = 10250
) -> dict[str, Any]:
    """A Ready node's status: capacity (with nvidia.com/gpu), conditions, addresses, node info."""
    capacity = {"cpu": spec.cpu, "memory": spec.memory, "pods": "110", "ephemeral-storage": "1Ti"}
    if spec.gpu is not None and spec.gpu_count > 0:
        capacity[GPU_RESOURCE] = str(spec.gpu_count)

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": type_, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": heartbeat, "lastTransitionTime": since}  # fmt: skip

    return {
        "capacity": capacity,
        "allocatable": dict(capacity),
        "conditions": [
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "devcluster process kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": spec.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": spec.name,
            "systemUUID": spec.name,
            "bootID": spec.name,
            "kernelVersion": "devcluster",
            "osImage": "devcluster fake node",
            "containerRuntimeVersion": "devcluster://process",
            "kubeletVersion": f"v{KUBE_RELEASE.version}",
            "kubeProxyVersion": f"v{KUBE_RELEASE.version}",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def lease_object(node_name: str, renew_time: str, duration_s: int = 40) -> dict[str, Any]:
    """The node's heartbeat Lease in ``kube-node-lease``."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node_name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": node_name, "leaseDurationSeconds": duration_s, "renewTime": renew_time},
    }
