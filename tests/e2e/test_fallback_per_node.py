"""Issue 12 end to end: flash-attn broken on one node only moves that node's pods, not the fleet.

devcluster makes one node's flash fail (``Cluster.set_node_env``: an environment the process kubelet
gives every container on that node, as a node with another GPU driver would differ). The pods run the
health stand-in of the server (``tests/health_standin.py``: /health bodies built by the server's own
code; on a node whose flash is broken it reports ``flash_attn.error_kind: import_error`` and serves
sdpa in process, as the real server does), since on this CPU machine the real server never runs flash.
The control plane, the scheduler (the NotIn affinity, the spread) and the operator process are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import Cluster
from tests import health_standin
from tests.e2e.fallback_support import (
    REPOSITORY,
    add_health_standin,
    condition,
    deployment,
    events,
    omegavlm,
    ovlm,
    pods,
    running_operator,
    server_container,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

FLASH_IMAGE = f"{REPOSITORY}:per-node-flash"
SDPA_IMAGE = f"{REPOSITORY}:per-node-sdpa"
GOOD, BAD = "h100-sxm-0", "h100-pcie-0"  # the two H100 nodes (devcluster.nodes)
PRODUCTS = ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"]
BROKEN = {health_standin.BROKEN_ENV: "broken"}


@pytest.fixture(scope="module")
def standin(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    add_health_standin(cluster, (FLASH_IMAGE, SDPA_IMAGE), tmp_path_factory.getbasetemp() / "per-node")
    return cluster


@pytest.fixture
def broken_nodes(standin: Cluster) -> Iterator[list[str]]:
    """The nodes whose flash the test breaks (it appends to the list); cleared afterwards."""
    names: list[str] = []
    yield names
    for node in names:
        standin.set_node_env(node, None)


def manifest(name: str, namespace: str, model_dir: Path) -> dict[str, Any]:
    obj = omegavlm(
        name,
        namespace,
        model_dir,
        replicas=2,
        image={"repository": REPOSITORY, "flashImage": FLASH_IMAGE, "sdpaImage": SDPA_IMAGE},
    )
    spec = obj["spec"]
    spec["gpu"] = {"products": PRODUCTS}
    # one pod per node at first, so that one lands on the broken node
    spec["topologySpreadConstraints"] = [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
    ]
    return obj


def live_pods(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return [p for p in pods(cluster, ns) if not p["metadata"].get("deletionTimestamp")]


def ready_on(cluster: Cluster, ns: str, image: str, node: str | None, count: int) -> bool:
    """Exactly ``count`` live pods, all of ``image``, Ready, and (``node``) all on that node."""
    live = live_pods(cluster, ns)
    return len(live) == count and all(
        p["spec"]["containers"][0]["image"] == image
        and (node is None or p["spec"].get("nodeName") == node)
        and any(c.get("ready") for c in p.get("status", {}).get("containerStatuses") or [])
        for p in live
    )


def test_flash_broken_on_one_node_keeps_the_fleet_on_flash_off_that_node(
    standin: Cluster, broken_nodes: list[str], model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    cluster, ns, name = standin, namespace, "pernode"
    cluster.set_node_env(BAD, BROKEN)
    broken_nodes.append(BAD)
    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(manifest(name, ns, model_dir))
        obj = wait_for(
            lambda: (
                (o := ovlm(cluster, ns, name)).get("status", {}).get("attention", {}).get("badNodes") and o
            ),
            180,
            "the broken node listed",
        )
        listed = obj["status"]["attention"]["badNodes"]
        assert [n["node"] for n in listed] == [BAD], listed
        assert "undefined symbol" in listed[0]["message"] and listed[0]["image"] == FLASH_IMAGE
        # Every flash pod ends on the good node, Ready on flash; the fleet never moved to sdpa.
        wait_for(
            lambda: ready_on(cluster, ns, FLASH_IMAGE, GOOD, 2), 240, "2 flash pods Ready on the good node"
        )
        dep = deployment(cluster, ns, name)
        assert dep is not None and server_container(dep)["image"] == FLASH_IMAGE
        terms = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert all(
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [BAD]} in t["matchExpressions"]
            for t in terms
        )
        obj = wait_for(
            lambda: (o := ovlm(cluster, ns, name))["status"].get("phase") == "Ready" and o, 60, "Ready"
        )
        assert "fallback" not in obj["status"]["attention"]
        degraded = condition(obj, "FlashAttentionDegraded")
        assert degraded is not None and degraded["status"] == "True"
        assert degraded["reason"] == "FlashAttentionNodeFailed" and BAD in degraded["message"]
        assert len(events(cluster, ns, "FlashAttentionNodeExcluded")) == 1
        assert events(cluster, ns, "FlashAttentionFallback") == []
        # kubectl describe shows the list.
        described = cluster.kubectl("describe", "ovlm", name, "-n", ns).stdout
        assert "Bad Nodes" in described and BAD in described


def test_flash_broken_on_both_nodes_rolls_the_fleet_back(
    standin: Cluster, broken_nodes: list[str], model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    cluster, ns, name = standin, namespace, "bothbad"
    for node in (GOOD, BAD):
        cluster.set_node_env(node, BROKEN)
        broken_nodes.append(node)
    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(manifest(name, ns, model_dir))
        obj = wait_for(
            lambda: (
                (o := ovlm(cluster, ns, name)).get("status", {}).get("attention", {}).get("fallback") and o
            ),
            180,
            "fleet fallback recorded",
        )
        assert obj["status"]["attention"]["fallback"]["fromImage"] == FLASH_IMAGE
        wait_for(lambda: ready_on(cluster, ns, SDPA_IMAGE, None, 2), 240, "2 sdpa pods Ready")
        assert len(events(cluster, ns, "FlashAttentionFallback")) == 1
