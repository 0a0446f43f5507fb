"""devcluster against its real control plane: API, CRDs, scheduling onto fake GPU nodes."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest

from devcluster import Cluster

pytestmark = pytest.mark.devcluster

SLEEP_IMAGE = "devcluster-test/sleep"
H100_PRODUCTS = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"]


@pytest.fixture(scope="module")
def ns(devcluster: Cluster) -> str:
    """A namespace of this module's own."""
    name = f"dc-sched-{uuid.uuid4().hex[:6]}"
    devcluster.kubectl("create", "namespace", name)
    devcluster.add_image(SLEEP_IMAGE, ["sleep", "3600"])
    return name


def test_nodes_ready_with_gpu_capacity_and_heartbeat_leases(devcluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in devcluster.get("nodes")["items"]}
    assert set(nodes) >= {"h100-sxm-0", "h100-pcie-0", "h200-0", "a100-0", "cpu-0"}
    for n in nodes.values():
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
    assert nodes["h100-sxm-0"]["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert nodes["h100-pcie-0"]["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-PCIe"
    assert nodes["h200-0"]["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert "nvidia.com/gpu" not in nodes["cpu-0"]["status"]["allocatable"]
    leases = {x["metadata"]["name"]: x for x in devcluster.get("leases", "-n", "kube-node-lease")["items"]}
    assert set(leases) >= set(nodes)
    # Heartbeats: the node agent renews every node's Lease (the node-lifecycle controller watches them).
    first = leases["h100-sxm-0"]["spec"]["renewTime"]
    devcluster.wait_for(
        lambda: devcluster.get("lease", "h100-sxm-0", "-n", "kube-node-lease")["spec"]["renewTime"] != first,
        timeout=15,
        what="lease renewed",
    )


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.devcluster.io}
spec:
  group: test.devcluster.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, enum: [red, blue]}
          status:
            type: object
            properties:
              phase: {type: string}
"""


def test_crd_applies_and_custom_resource_round_trips(devcluster: Cluster, ns: str) -> None:
    devcluster.apply(CRD)
    devcluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.devcluster.io", "--timeout=30s"
    )
    cr = {"apiVersion": "test.devcluster.io/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": ns},
          "spec": {"size": 3, "color": "red"}}  # fmt: skip
    devcluster.wait_for(lambda: devcluster.apply(cr), timeout=20, what="CR accepted")
    got = devcluster.get("widget", "w1", "-n", ns)
    assert got["spec"] == {"size": 3, "color": "red"}
    # The status subresource takes the status.
    devcluster.kubectl(
        "patch", "widget", "w1", "-n", ns, "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Done"}}',
        check=False,
    )  # fmt: skip
    bad = {**cr, "metadata": {"name": "w2", "namespace": ns}, "spec": {"size": "big", "color": "green"}}
    out = devcluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0
    assert "spec.size" in out.stderr and "spec.color" in out.stderr, out.stderr
    assert devcluster.kubectl("get", "widget", "w2", "-n", ns, check=False).returncode != 0


def gpu_pod(name: str, ns: str, gpus: int, products: list[str]) -> dict[str, Any]:
    """A pod as the operator builds it: GPU limit, product affinity, toleration of the GPU taint."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": f"{SLEEP_IMAGE}:1",
                    "resources": {"limits": {"nvidia.com/gpu": gpus}},
                }
            ],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "nvidia.com/gpu.product", "operator": "In", "values": products}
                                ]
                            }
                        ]
                    }
                }
            },
        },
    }


def _pod(devcluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return devcluster.get("pod", name, "-n", ns)


def test_scheduler_places_gpu_pods_on_h100_nodes_only(devcluster: Cluster, ns: str) -> None:
    names = [f"h100-{i}" for i in range(4)]
    devcluster.apply([gpu_pod(n, ns, 1, H100_PRODUCTS) for n in names])
    placed = {
        n: devcluster.wait_for(lambda n=n: _pod(devcluster, ns, n)["spec"].get("nodeName"), what=f"{n} bound")
        for n in names
    }
    assert set(placed.values()) <= {"h100-sxm-0", "h100-pcie-0"}, placed
    # The bound pods run (the kubelet side) on their H100 node.
    for n in names:
        devcluster.wait_for(
            lambda n=n: _pod(devcluster, ns, n)["status"].get("phase") == "Running", what=f"{n} Running"
        )
    devcluster.kubectl("delete", "pod", "-n", ns, *names, "--wait=false")


def test_too_many_gpus_stays_pending_with_the_schedulers_message(devcluster: Cluster, ns: str) -> None:
    devcluster.apply(gpu_pod("greedy", ns, 9, H100_PRODUCTS))

    def unschedulable() -> dict[str, Any] | None:
        conds = _pod(devcluster, ns, "greedy").get("status", {}).get("conditions", [])
        return next((c for c in conds if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    cond = devcluster.wait_for(unschedulable, what="PodScheduled=False")
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond["message"]
    assert _pod(devcluster, ns, "greedy")["spec"].get("nodeName") is None


def test_kubectl_and_api_client_agree(devcluster: Cluster) -> None:
    from kubernetes import client

    with devcluster.api_client() as api:
        names = {n.metadata.name for n in client.CoreV1Api(api).list_node().items if n.metadata}
    assert "h100-sxm-0" in names
    version = json.loads(devcluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert version == "v1.20.2"
    with pytest.raises(subprocess.CalledProcessError):
        devcluster.kubectl("get", "nosuchkind")
