"""The chart installed on devcluster: the operator runs as the chart's Deployment pod (the process
kubelet runs the operator image as ``python -m omega_operator``) with the environment the chart
renders and the token of the chart's ServiceAccount (not admin), reconciles an OmegaVLM and rolls it
back from flash-attn to SDPA: the chart's RBAC is enough. A request outside it is refused,
``helm test`` passes, and ``helm uninstall`` leaves nothing behind but the CRD.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from devcluster import Cluster
from tests.chart.helm import CHART, NAMESPACE, RELEASE, run_helm

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

OPERATOR_TAG = "chart-test"  # a tag only this module maps, so other tests' images are untouched
OPERATOR_IMAGE = f"omega-vlm/omega-vlm-operator:{OPERATOR_TAG}"
FULLNAME = f"{RELEASE}-omega-vlm"
OPERATOR = f"{FULLNAME}-operator"
WORKLOAD_NS = "chart-e2e"
SERVER_REPO = "omega-vlm/omega-vlm-server"  # the process kubelet runs it as `python -m omega_server`
CRD = "omegavlms.vlm.omega.io"

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (subprocess.CalledProcessError, KeyError, ValueError, OSError, ApiException) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what}: not after {timeout:.0f}s" + (f" (last: {last})" if last else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return int(resp.status)


@dataclass
class Release:
    cluster: Cluster
    sa_kubeconfig: Path
    liveness_port: int
    metrics_port: int
    install_output: str
    installed: bool = True

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_helm(*args, "--namespace", NAMESPACE, check=check, kubeconfig=self.cluster.kubeconfig)

    def sa_api(self) -> client.ApiClient:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.sa_kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)

    def operator_pod(self) -> dict[str, Any]:
        pods = self.cluster.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")[
            "items"
        ]
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]

    def operator_log(self) -> str:
        return self.cluster.pod_log(NAMESPACE, self.operator_pod()["metadata"]["name"])


def sa_kubeconfig(cluster: Cluster, namespace: str, service_account: str, out: Path) -> Path:
    """A kubeconfig that authenticates with a token of ``service_account``.

    Kubernetes 1.20 has no `kubectl create token`: a Secret of type
    kubernetes.io/service-account-token, which the token controller fills in, gives one.
    """
    secret = f"{service_account}-chart-test-token"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": secret,
                "namespace": namespace,
                "annotations": {"kubernetes.io/service-account.name": service_account},
            },
        }
    )
    data = wait_for(
        lambda: cluster.get("secret", secret, "-n", namespace).get("data", {}).get("token"),
        30,
        "service-account token",
    )
    kc = yaml.safe_load(cluster.kubeconfig.read_text())
    kc["users"] = [{"name": service_account, "user": {"token": base64.b64decode(data).decode()}}]
    for ctx in kc["contexts"]:
        ctx["context"]["user"] = service_account
        ctx["context"]["namespace"] = namespace
    out.write_text(yaml.safe_dump(kc))
    out.chmod(0o600)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random VLM checkpoint written by the server's own tool."""
    out = tmp_path_factory.mktemp("tiny-vlm")
    subprocess.run(
        [sys.executable, "-m", "omega_server.tiny", "--arch", "qwen2_vl", "--out", str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    return out


@pytest.fixture(scope="module")
def release(devcluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """`helm install` with default values (all namespaces), then the operator image made runnable."""
    liveness, metrics = free_port(), free_port()
    out = run_helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set",
        f"operator.image.tag={OPERATOR_TAG}",
        # The operator runs as a host process here: give it ports no other test uses.
        "--set",
        f"operator.liveness.port={liveness}",
        "--set",
        f"operator.metrics.port={metrics}",
        "--set",
        "operator.probe.intervalSeconds=2",
        # devcluster has no cluster DNS: the test pod reaches the operator on the host.
        "--set",
        f"tests.livenessUrl=http://127.0.0.1:{liveness}/healthz",
        kubeconfig=devcluster.kubeconfig,
    ).stdout
    # Until the image "exists" (the process kubelet knows it) the operator pod is in ErrImagePull;
    # now that the chart's ServiceAccount exists, make the image runnable with its token.
    kubeconfig = sa_kubeconfig(devcluster, NAMESPACE, FULLNAME, tmp_path_factory.mktemp("sa") / "kubeconfig")
    devcluster.add_image(
        OPERATOR_IMAGE,
        [sys.executable, "-m", "omega_operator"],
        env={"KUBECONFIG": str(kubeconfig), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    rel = Release(devcluster, kubeconfig, liveness, metrics, out)
    try:
        yield rel
    finally:
        devcluster.kubectl("delete", "omegavlms", "--all", "-n", WORKLOAD_NS, "--wait=true", check=False)
        if rel.installed:
            rel.helm("uninstall", RELEASE, "--wait", check=False)
        devcluster.kubectl("delete", "namespace", WORKLOAD_NS, NAMESPACE, "--wait=false", check=False)


def test_install_runs_the_operator(release: Release) -> None:
    assert "STATUS: deployed" in release.install_output
    # NOTES tell the user how to check the release and apply a first OmegaVLM.
    assert f"helm test {RELEASE} -n {NAMESPACE}" in release.install_output
    assert "kind: OmegaVLM" in release.install_output
    cluster = release.cluster
    assert cluster.get("crd", CRD)["spec"]["names"]["shortNames"] == ["ovlm"]
    wait_for(
        lambda: cluster.get("deployment", OPERATOR, "-n", NAMESPACE)["status"].get("availableReplicas") == 1,
        90,
        "operator Deployment available",
    )
    pod = release.operator_pod()
    assert pod["spec"]["serviceAccountName"] == FULLNAME
    assert pod["spec"]["nodeName"] == "cpu-0"  # no GPU node for the operator
    wait_for(lambda: http_status(f"http://127.0.0.1:{release.liveness_port}/healthz") == 200, 60, "liveness")
    # The chart's env reached the operator's typed settings.
    wait_for(lambda: "omega-vlm-operator started" in release.operator_log(), 30, "operator start-up line")
    started = next(
        line for line in release.operator_log().splitlines() if "omega-vlm-operator started" in line
    )
    assert "'namespaces': []" in started and "'probe_interval': 2.0" in started
    assert f"'liveness_port': {release.liveness_port}" in started and "'peering': None" in started
    # The kubelet's liveness probe (the chart's httpGet /healthz) keeps passing: no restarts.
    status = release.operator_pod()["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["restartCount"] == 0


def test_requests_outside_the_rbac_are_refused(release: Release) -> None:
    api = release.sa_api()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    # Inside: what the operator needs.
    custom.list_cluster_custom_object("vlm.omega.io", "v1alpha1", "omegavlms")
    core.list_pod_for_all_namespaces(limit=1)
    apps.list_deployment_for_all_namespaces(limit=1)
    # Outside: secrets, nodes, deleting Deployments, creating OmegaVLMs.
    refused = [
        lambda: core.list_secret_for_all_namespaces(limit=1),
        lambda: core.list_namespaced_secret(NAMESPACE, limit=1),
        lambda: core.list_node(limit=1),
        lambda: apps.delete_namespaced_deployment(OPERATOR, NAMESPACE),
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


def _ovlm(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get("omegavlm", name, "-n", WORKLOAD_NS)


def test_operator_reconciles_and_falls_back_with_the_chart_rbac(release: Release, tiny_model: Path) -> None:
    cluster = release.cluster
    cluster.kubectl("create", "namespace", WORKLOAD_NS)
    cluster.apply(
        {
            "apiVersion": "vlm.omega.io/v1alpha1",
            "kind": "OmegaVLM",
            "metadata": {"name": "tiny", "namespace": WORKLOAD_NS},
            "spec": {
                "model": {"name": "tiny", "uri": f"file://{tiny_model}"},
                "replicas": 1,
                "image": {"repository": SERVER_REPO, "tag": "chart"},
                "attention": "auto",
                "runtime": {"maxBatchSize": 2, "maxModelLength": 512, "dtype": "float32"},
                "gpu": {"count": 1},
            },
        }
    )
    # Reconcile: the flash variant first, written by the operator under the chart's RBAC.
    deploy = wait_for(
        lambda: cluster.get("deployment", "tiny", "-n", WORKLOAD_NS), 60, "Deployment created by the operator"
    )
    # Fallback: flash-attn is not installed here, the server says so on /health, the operator
    # rolls the Deployment to the sdpa variant.
    done = wait_for(
        lambda: (o := _ovlm(cluster, "tiny")).get("status", {}).get("attention", {}).get("fallback") and o,
        240,
        "flash -> sdpa fallback recorded",
    )
    fb = done["status"]["attention"]["fallback"]
    assert fb["reason"] == "FlashAttentionLoadFailed" and fb["fromImage"] == f"{SERVER_REPO}:chart-flash"
    assert "FlashAttention2" in fb["message"]
    image = cluster.get("deployment", "tiny", "-n", WORKLOAD_NS)["spec"]["template"]["spec"]["containers"][0][
        "image"
    ]
    assert image == f"{SERVER_REPO}:chart-sdpa"
    assert deploy["metadata"]["ownerReferences"][0]["kind"] == "OmegaVLM"
    ready = wait_for(
        lambda: (o := _ovlm(cluster, "tiny"))["status"].get("phase") == "Ready" and o, 240, "Ready on sdpa"
    )
    assert ready["status"]["attention"]["active"] == "sdpa"
    conditions = {c["type"]: c for c in ready["status"]["conditions"]}
    assert conditions["FlashAttentionDegraded"]["status"] == "True"
    events = cluster.get("events", "-n", WORKLOAD_NS, "--field-selector", "involvedObject.kind=OmegaVLM")[
        "items"
    ]
    assert "FlashAttentionFallback" in {e["reason"] for e in events}  # events: create is granted
    # The operator met no refusal on the way.
    log = release.operator_log()
    assert "Forbidden" not in log and " 403" not in log, log[-3000:]
    # ... and counts it on /metrics (the ServiceMonitor's target).
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
    pods = release.cluster.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=test")["items"]
    assert pods == []


def _leftovers(cluster: Cluster) -> list[str]:
    """Objects labelled with the release, or in its namespace, that are not Kubernetes' own."""
    kinds = "deployments,replicasets,pods,services,serviceaccounts,configmaps,secrets,roles,rolebindings,jobs"
    found = []
    for item in cluster.get(kinds, "-n", NAMESPACE)["items"]:
        name = item["metadata"]["name"]
        if name in ("default", "kube-root-ca.crt") or name.startswith("default-token-"):
            continue
        found.append(f"{item['kind']}/{name}")
    labelled = cluster.get(
        "clusterroles,clusterrolebindings,configmaps", "-A", "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    found += [f"{i['kind']}/{i['metadata']['name']}" for i in labelled["items"]]
    return found


def test_uninstall_leaves_only_the_crds(release: Release) -> None:
    cluster = release.cluster
    cluster.kubectl("delete", "omegavlm", "tiny", "-n", WORKLOAD_NS, "--wait=true", "--timeout=60s")
    release.helm("uninstall", RELEASE, "--wait", "--timeout", "120s")
    release.installed = False
    assert (
        wait_for(lambda: _leftovers(cluster) == [] or None, 60, "release objects gone", interval=1) is None
        or True
    )
    assert _leftovers(cluster) == []
    # The operator process is stopped with its pod.
    wait_for(lambda: not _answers(release.liveness_port), 30, "operator process stopped")
    # Helm never deletes CRDs (and with them every OmegaVLM): they stay.
    assert cluster.get("crd", CRD)["metadata"]["name"] == CRD
    assert json.loads(cluster.kubectl("get", "omegavlms", "-A", "-o", "json").stdout)["items"] == []


def _answers(port: int) -> bool:
    try:
        return http_status(f"http://127.0.0.1:{port}/healthz") == 200
    except OSError:
        return False
