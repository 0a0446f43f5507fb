"""Issue 14 end to end on devcluster: the scale subresource (`kubectl scale ovlm`, an HPA accepted,
what an autoscaler writes through it is never reverted) and the default Hopper placement.

The operator runs as a real process against the devcluster API server; pods run an idle stand-in
image (Running, never Ready), which is all scaling and placement need.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    PROBE_INTERVAL,
    OperatorProcess,
    deployment,
    dump,
    install_crd,
    ovlm,
    pods,
    to_yaml,
    wait_for,
)
from tests.e2e.operator_support import base_spec, manifest

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

IDLE_REPO = "registry.example.com/omega-idle-scale"


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"scl{uuid.uuid4().hex[:5]}"


@pytest.fixture(scope="module")
def cluster(devcluster: Cluster) -> Cluster:
    install_crd(devcluster)
    for variant in ("flash", "sdpa"):
        devcluster.add_image(f"{IDLE_REPO}:v1-{variant}", ["sleep", "3600"])
    return devcluster


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster, f"{prefix}-*", log).start()
    yield op
    op.stop()


@pytest.fixture
def ns(cluster: Cluster, operator: OperatorProcess, prefix: str) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    print(dump(cluster, name, operator))  # shown by pytest only when the test failed
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster: Cluster, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--validate=false", "-f", "-", input=to_yaml(obj))


def dep_replicas(cluster: Cluster, ns: str, name: str) -> int | None:
    return ((deployment(cluster, ns, name) or {}).get("spec") or {}).get("replicas")


def served_hpa_version(cluster: Cluster) -> str:
    """autoscaling/v2 where the API server serves it (1.23+), else v2beta2 (devcluster's 1.20)."""
    versions = cluster.kubectl("api-versions").stdout.split()
    return "autoscaling/v2" if "autoscaling/v2" in versions else "autoscaling/v2beta2"


def hpa(name: str, ns: str, api_version: str) -> dict[str, Any]:
    """The README's HPA: OmegaVLM as the target, the servers' queue depth as the metric."""
    return {
        "apiVersion": api_version,
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "scaleTargetRef": {"apiVersion": "vlm.omega.io/v1alpha1", "kind": "OmegaVLM", "name": name},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "omega_vlm_queue_depth"},
                        "target": {"type": "AverageValue", "averageValue": "4"},
                    },
                }
            ],
        },
    }


def test_kubectl_scale_and_the_scale_subresource_drive_the_deployment(cluster: Cluster, ns: str) -> None:
    apply(cluster, manifest("sc", ns, {**base_spec(IDLE_REPO), "replicas": 1}))
    wait_for(lambda: dep_replicas(cluster, ns, "sc") == 1, 30, "Deployment with 1 replica")

    cluster.kubectl("scale", "ovlm", "sc", "-n", ns, "--replicas", "3")
    assert ovlm(cluster, ns, "sc")["spec"]["replicas"] == 3
    wait_for(lambda: dep_replicas(cluster, ns, "sc") == 3, 10 * PROBE_INTERVAL, "Deployment scaled to 3")

    # The scale subresource as an autoscaler reads it: replicas, and the pods' selector.
    path = f"/apis/vlm.omega.io/v1alpha1/namespaces/{ns}/omegavlms/sc/scale"

    def scale() -> dict[str, Any] | None:
        body = json.loads(cluster.kubectl("get", "--raw", path).stdout)
        return body if body["status"].get("replicas") == 3 and body["status"].get("selector") else None

    body = wait_for(scale, 10 * PROBE_INTERVAL, "scale status")
    assert body["kind"] == "Scale" and body["spec"]["replicas"] == 3
    selected = cluster.kubectl(
        "get", "pods", "-n", ns, "-l", body["status"]["selector"], "-o", "name"
    ).stdout.split()
    assert len(selected) == 3, selected

    # A write through the subresource (what an HPA or KEDA does) is followed and never reverted.
    body["spec"]["replicas"] = 2
    cluster.kubectl("replace", "--raw", path, "-f", "-", input=json.dumps(body))
    wait_for(lambda: dep_replicas(cluster, ns, "sc") == 2, 10 * PROBE_INTERVAL, "Deployment scaled to 2")
    cluster.kubectl("annotate", "ovlm", "sc", "-n", ns, "test/poke=1")  # a reconcile for another reason
    wait_for(lambda: len(pods(cluster, ns)) == 2, 60, "two pods")
    assert ovlm(cluster, ns, "sc")["spec"]["replicas"] == 2
    assert dep_replicas(cluster, ns, "sc") == 2


def test_an_hpa_targeting_an_omegavlm_is_accepted(cluster: Cluster, ns: str) -> None:
    apply(cluster, manifest("auto", ns, {**base_spec(IDLE_REPO), "replicas": 1}))
    version = served_hpa_version(cluster)
    apply(cluster, hpa("auto", ns, version))
    got = json.loads(cluster.kubectl("get", f"hpa.{version.split('/')[1]}.autoscaling", "auto", "-n", ns,
                                     "-o", "json").stdout)  # fmt: skip
    assert got["spec"]["scaleTargetRef"]["kind"] == "OmegaVLM"

    # The HPA controller finds the target through the scale subresource (it reads replicas and
    # the selector; it cannot scale without a metrics API, which devcluster does not serve).
    def read_the_target() -> dict[str, Any] | None:
        status = json.loads(cluster.kubectl("get", "hpa", "auto", "-n", ns, "-o", "json").stdout)["status"]
        return status if status.get("currentReplicas") == 1 else None

    wait_for(read_the_target, 60, "the HPA reads the OmegaVLM's replicas")
    assert dep_replicas(cluster, ns, "auto") == 1
