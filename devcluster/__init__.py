"""devcluster: a real local Kubernetes control plane with simulated NVIDIA GPU nodes.

``Cluster.start()`` runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built
from Debian's kubernetes source package by ``python -m devcluster build``), registers fake GPU
nodes with GPU Feature Discovery labels, and runs a process kubelet that executes pods bound to
them as local processes.
"""

from devcluster.cluster import TEST_KUBELET, Cluster, ClusterError
from devcluster.kubelet import KubeletConfig
from devcluster.nodes import A100_SXM, DEFAULT_NODES, GPU_TAINT, H100_PCIE, H100_SXM, H200, GpuModel, NodeSpec

__all__ = [
    "A100_SXM",
    "DEFAULT_NODES",
    "GPU_TAINT",
    "H100_PCIE",
    "H100_SXM",
    "H200",
    "TEST_KUBELET",
    "Cluster",
    "ClusterError",
    "GpuModel",
    "KubeletConfig",
    "NodeSpec",
]
