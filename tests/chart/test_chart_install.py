"""The chart installed on devcluster with default values (all namespaces).

The operator runs as the chart's Deployment pod (the process kubelet runs the operator image as
``python -m omega_operator``) with the environment the chart renders and the token of the chart's
ServiceAccount, not admin. It reconciles an OmegaVLM and rolls it back from flash-attn to SDPA: the
chart's RBAC is enough. Requests outside it are refused, ``helm test`` passes, and
``helm uninstall`` leaves nothing behind but the CRD.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from devcluster import Cluster
from tests.chart.helm import NAMESPACE, RELEASE
from tests.chart.release import (
    CRD,
    SERVER_REPO,
    Release,
    answers,
    install,
    leftovers,
    omegavlm,
    refusals,
    wait_fallback,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

WORKLOAD_NS = "chart-e2e"


@pytest.fixture(scope="module")
def release(devcluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    rel = install(
        devcluster,
        RELEASE,
        NAMESPACE,
        "chart-test",
        ["operator.probe.intervalSeconds=2"],
        tmp_path_factory.mktemp("sa"),
    )
    try:
        yield rel
    finally:
        devcluster.kubectl("delete", "omegavlms", "--all", "-n", WORKLOAD_NS, "--wait=true", check=False)
        if rel.installed:
            rel.helm("uninstall", RELEASE, "--wait", check=False)
        devcluster.kubectl("delete", "namespace", WORKLOAD_NS, NAMESPACE, "--wait=false", check=False)


def test_install_runs_the_operator(release: Release) -> None:
    out = release.install_output
    assert "STATUS: deployed" in out
    # NOTES tell the user how to check the release and apply a first OmegaVLM.
    assert f"helm test {RELEASE} -n {NAMESPACE}" in out and "kind: OmegaVLM" in out
    assert "watches OmegaVLMs in all namespaces" in out
    cluster = release.cluster
    assert cluster.get("crd", CRD)["spec"]["names"]["shortNames"] == ["ovlm"]
    release.wait_operator_up()
    pod = release.operator_pod()
    assert pod["spec"]["serviceAccountName"] == release.fullname
    assert pod["spec"]["nodeName"] == "cpu-0"  # no GPU node for the operator
    # The chart's env reached the operator's typed settings.
    started = next(
        line for line in release.operator_log().splitlines() if "omega-vlm-operator started" in line
    )
    assert "'namespaces': []" in started and "'probe_interval': 2.0" in started
    assert f"'liveness_port': {release.liveness_port}" in started and "'peering': None" in started
    # The kubelet's liveness probe (the chart's httpGet /healthz) passes: ready, no restarts.
    status = release.operator_pod()["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["restartCount"] == 0


def test_requests_outside_the_rbac_are_refused(release: Release) -> None:
    api = release.sa_api()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    # Inside: what the operator needs, in every namespace.
    custom.list_cluster_custom_object("vlm.omega.io", "v1alpha1", "omegavlms")
    core.list_pod_for_all_namespaces(limit=1)
    apps.list_deployment_for_all_namespaces(limit=1)
    # Outside: secrets, nodes, namespaces, RBAC, deleting Deployments, creating OmegaVLMs.
    refused = [
        lambda: core.list_secret_for_all_namespaces(limit=1),
        lambda: core.list_namespaced_secret(NAMESPACE, limit=1),
        lambda: core.list_node(limit=1),
        lambda: core.list_namespace(limit=1),
        lambda: apps.delete_namespaced_deployment(release.operator, NAMESPACE),
        lambda: custom.create_namespaced_custom_object(
            "vlm.omega.io", "v1alpha1", NAMESPACE, "omegavlms", {"apiVersion": "vlm.omega.io/v1alpha1"}
        ),
        lambda: client.RbacAuthorizationV1Api(api).list_cluster_role(limit=1),
    ]
    for call in refused:
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403, err.value
    api.close()


def test_operator_reconciles_and_falls_back_with_the_chart_rbac(release: Release, tiny_model: Path) -> None:
    cluster = release.cluster
    cluster.kubectl("create", "namespace", WORKLOAD_NS)
    cluster.apply(omegavlm("tiny", WORKLOAD_NS, tiny_model, "chart"))
    # Reconcile: the operator writes the Deployment (flash variant first) under the chart's RBAC.
    deploy = wait_for(lambda: cluster.get("deployment", "tiny", "-n", WORKLOAD_NS), 60, "Deployment")
    assert deploy["metadata"]["ownerReferences"][0]["kind"] == "OmegaVLM"
    # Fallback: flash-attn is not installed here, the server says so on /health, the operator
    # rolls the Deployment to the sdpa variant.
    ready = wait_fallback(cluster, WORKLOAD_NS, "tiny")
    fb = ready["status"]["attention"]["fallback"]
    assert fb["reason"] == "FlashAttentionLoadFailed" and fb["fromImage"] == f"{SERVER_REPO}:chart-flash"
    assert "FlashAttention2" in fb["message"]
    spec = cluster.get("deployment", "tiny", "-n", WORKLOAD_NS)["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == f"{SERVER_REPO}:chart-sdpa"
    conditions = {c["type"]: c for c in ready["status"]["conditions"]}
    assert conditions["FlashAttentionDegraded"]["status"] == "True"
    events = cluster.get("events", "-n", WORKLOAD_NS, "--field-selector", "involvedObject.kind=OmegaVLM")
    assert "FlashAttentionFallback" in {e["reason"] for e in events["items"]}
    # The operator met no refusal on the way (kopf logs APIForbiddenError, ours ApiError 403).
    log = release.operator_log()
    assert not refusals(log), log[-3000:]
    # ... and counts it on /metrics (what the ServiceMonitor scrapes).
    with urllib.request.urlopen(f"http://127.0.0.1:{release.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'omega_operator_fallbacks_total{reason="FlashAttentionLoadFailed"} 1.0' in text
    assert (
        'omega_operator_omegavlm_info{attention="sdpa",name="tiny",namespace="chart-e2e",phase="Ready"}'
        in text
    )


def test_helm_test_passes(release: Release) -> None:
    proc = release.helm("test", RELEASE, "--timeout", "120s")
    assert "Phase:          Succeeded" in proc.stdout, proc.stdout
    # hook-succeeded: the test pod is gone again.
    assert (
        release.cluster.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=test")["items"] == []
    )


def test_uninstall_leaves_only_the_crds(release: Release) -> None:
    cluster = release.cluster
    cluster.kubectl("delete", "omegavlm", "tiny", "-n", WORKLOAD_NS, "--wait=true", "--timeout=60s")
    release.uninstall()
    wait_for(lambda: leftovers(cluster, RELEASE, [NAMESPACE]) == [], 60, "release objects gone", interval=1)
    # The operator process stopped with its pod.
    wait_for(lambda: not answers(release.liveness_port), 30, "operator process stopped")
    # Helm never deletes CRDs (and with them every OmegaVLM): they stay.
    assert cluster.get("crd", CRD)["metadata"]["name"] == CRD
    assert json.loads(cluster.kubectl("get", "omegavlms", "-A", "-o", "json").stdout)["items"] == []
