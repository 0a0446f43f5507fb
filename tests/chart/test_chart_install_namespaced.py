"""The chart installed on devcluster watching a list of namespaces: Roles and RoleBindings in the
watched namespaces only (plus kopf's read-only CRD and namespace rules) are enough for the operator
to reconcile and fall back there; other namespaces are closed to it. `helm upgrade` to proxy-mode
probes keeps pods/proxy (auto, the default, has it already) and rolls the operator (Recreate); uninstall removes the Roles again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from devcluster import Cluster
from tests.chart.helm import CHART
from tests.chart.release import (
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

NAME = "omega-ns"
NAMESPACE = "omega-system-ns"
WATCHED = "chart-watched"
OTHER = "chart-unwatched"


@pytest.fixture(scope="module")
def release(devcluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    for ns in (WATCHED, OTHER):
        devcluster.kubectl("create", "namespace", ns)
    rel = install(
        devcluster,
        NAME,
        NAMESPACE,
        "chart-test-ns",
        [
            f"operator.watch.namespaces={{{WATCHED}}}",
            "operator.probe.intervalSeconds=2",
            "dashboard.enabled=false",
        ],
        tmp_path_factory.mktemp("sa-ns"),
    )
    try:
        yield rel
    finally:
        for ns in (WATCHED, OTHER):
            devcluster.kubectl("delete", "omegavlms", "--all", "-n", ns, "--wait=true", check=False)
        if rel.installed:
            rel.helm("uninstall", NAME, "--wait", check=False)
        devcluster.kubectl("delete", "namespace", WATCHED, OTHER, NAMESPACE, "--wait=false", check=False)


def test_roles_only_in_the_watched_namespace(release: Release) -> None:
    cluster = release.cluster
    assert f"watches OmegaVLMs in: {WATCHED}" in release.install_output
    roles = cluster.get("roles", "-A", "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    assert [(r["metadata"]["namespace"], r["metadata"]["name"]) for r in roles] == [
        (WATCHED, release.operator)
    ]
    rules = {(g, res) for rule in roles[0]["rules"] for g in rule["apiGroups"] for res in rule["resources"]}
    # auto probes by default: the pod proxy after a failed direct connection
    assert ("", "pods") in rules and ("", "pods/proxy") in rules
    release.wait_operator_up()
    started = next(
        line for line in release.operator_log().splitlines() if "omega-vlm-operator started" in line
    )
    assert f"'namespaces': ['{WATCHED}']" in started and "'health_probe_mode': 'auto'" in started
    api = release.sa_api()
    custom = client.CustomObjectsApi(api)
    custom.list_namespaced_custom_object("vlm.omega.io", "v1alpha1", WATCHED, "omegavlms")
    for call in (
        lambda: custom.list_namespaced_custom_object("vlm.omega.io", "v1alpha1", OTHER, "omegavlms"),
        lambda: custom.list_cluster_custom_object("vlm.omega.io", "v1alpha1", "omegavlms"),
        lambda: client.CoreV1Api(api).list_namespaced_pod(OTHER, limit=1),
    ):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403
    api.close()


def test_reconciles_and_falls_back_in_the_watched_namespace(release: Release, tiny_model: Path) -> None:
    cluster = release.cluster
    cluster.apply(omegavlm("tiny", WATCHED, tiny_model, "chart-ns"))
    cluster.apply(omegavlm("ignored", OTHER, tiny_model, "chart-ns"))
    ready = wait_fallback(cluster, WATCHED, "tiny")
    assert ready["status"]["attention"]["fallback"]["reason"] == "FlashAttentionLoadFailed"
    # The other namespace is not the operator's business: nothing reconciled there.
    assert "status" not in cluster.get("omegavlm", "ignored", "-n", OTHER)
    assert cluster.get("deployments", "-n", OTHER)["items"] == []
    log = release.operator_log()
    assert not refusals(log), log[-3000:]


def test_upgrade_to_proxy_probes(release: Release) -> None:
    """`helm upgrade` to proxy-mode probes: the Role has pods/proxy, the operator is recreated."""
    cluster = release.cluster
    old_pod = release.operator_pod()["metadata"]["name"]
    release.helm("upgrade", NAME, str(CHART), "--reuse-values", "--set", "operator.probe.mode=proxy")
    wait_for(
        lambda: release.operator_pod()["metadata"]["name"] != old_pod,
        90,
        "operator pod replaced",
        interval=1,
    )
    release.wait_operator_up()
    started = next(
        line for line in release.operator_log().splitlines() if "omega-vlm-operator started" in line
    )
    assert "'health_probe_mode': 'proxy'" in started
    (role,) = cluster.get("roles", "-n", WATCHED, "-l", f"app.kubernetes.io/instance={NAME}")["items"]
    assert any("pods/proxy" in r["resources"] and r["verbs"] == ["get"] for r in role["rules"])
    # The operator's token may now GET the pod proxy in the watched namespace: the API server
    # authorizes it and only then refuses devcluster's loopback pod address (a real cluster's pod
    # IPs are proxyable); elsewhere it is forbidden.
    pod = cluster.get("pods", "-n", WATCHED, "-l", "app.kubernetes.io/instance=tiny")["items"][0]
    api = release.sa_api()
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as err:
        core.connect_get_namespaced_pod_proxy_with_path(f"{pod['metadata']['name']}:8000", WATCHED, "health")
    assert err.value.status == 400 and "address not allowed" in str(err.value.body)
    with pytest.raises(ApiException) as err:
        core.connect_get_namespaced_pod_proxy_with_path("x:8000", OTHER, "health")
    assert err.value.status == 403
    api.close()
    # The recreated operator keeps the fallback (it lives in the status) and meets no refusal.
    obj = cluster.get("omegavlm", "tiny", "-n", WATCHED)
    assert obj["status"]["attention"]["fallback"]["reason"] == "FlashAttentionLoadFailed"
    image = cluster.get("deployment", "tiny", "-n", WATCHED)["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    assert image.endswith("-sdpa")
    log = release.operator_log()
    assert not refusals(log), log[-3000:]


def test_uninstall_removes_the_roles(release: Release) -> None:
    cluster = release.cluster
    cluster.kubectl("delete", "omegavlm", "tiny", "-n", WATCHED, "--wait=true", "--timeout=60s")
    release.uninstall()
    wait_for(lambda: leftovers(cluster, NAME, [NAMESPACE]) == [], 60, "release objects gone", interval=1)
    wait_for(lambda: not answers(release.liveness_port), 30, "operator process stopped")
