"""Support for the install tests: a Helm release of the chart on devcluster whose operator pod runs
for real (the process kubelet runs the operator image as ``python -m omega_operator``) with the
token of the chart's ServiceAccount. No pytest here."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from devcluster import Cluster
from tests import polling
from tests.chart.helm import CHART, run_helm

OPERATOR_REPOSITORY = "omega-vlm/omega-vlm-operator"  # the chart's default
SERVER_REPO = "omega-vlm/omega-vlm-server"  # the process kubelet runs it as `python -m omega_server`
CRD = "omegavlms.vlm.omega.io"

T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.5) -> T:
    """``tests.polling.wait_for``, also waiting through socket errors and API errors of the
    kubernetes client (the operator pod's endpoints and the ServiceAccount's calls)."""
    return polling.wait_for(predicate, timeout, what, interval, (*polling.TRANSIENT, OSError, ApiException))


def refusals(log: str) -> list[str]:
    """Log lines that show an RBAC refusal: the API server's "... is forbidden: User ..." (in our
    ApiError) or kopf's APIForbiddenError. (A bare "403" would also match ports and timestamps.)"""
    return [line for line in log.splitlines() if re.search("forbidden", line, re.IGNORECASE)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return int(resp.status)


def answers(port: int) -> bool:
    """True when something answers 200 on 127.0.0.1:port/healthz."""
    try:
        return http_status(f"http://127.0.0.1:{port}/healthz") == 200
    except OSError:
        return False


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


@dataclass
class Release:
    """An installed release and how to reach its operator."""

    cluster: Cluster
    name: str
    namespace: str
    sa_kubeconfig: Path
    liveness_port: int
    metrics_port: int
    install_output: str
    installed: bool = True

    @property
    def fullname(self) -> str:
        return f"{self.name}-omega-vlm"

    @property
    def operator(self) -> str:
        return f"{self.fullname}-operator"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_helm(*args, "--namespace", self.namespace, check=check, kubeconfig=self.cluster.kubeconfig)

    def sa_api(self) -> client.ApiClient:
        """An API client with the operator's ServiceAccount token."""
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.sa_kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)

    def operator_pod(self) -> dict[str, Any]:
        pods = self.cluster.get("pods", "-n", self.namespace, "-l", "app.kubernetes.io/component=operator")
        assert len(pods["items"]) == 1, [p["metadata"]["name"] for p in pods["items"]]
        return dict(pods["items"][0])

    def operator_log(self) -> str:
        return self.cluster.pod_log(self.namespace, self.operator_pod()["metadata"]["name"])

    def wait_operator_up(self) -> None:
        wait_for(
            lambda: (
                self.cluster.get("deployment", self.operator, "-n", self.namespace)["status"].get(
                    "availableReplicas"
                )
                == 1
            ),
            90,
            "operator Deployment available",
        )
        wait_for(lambda: answers(self.liveness_port), 60, "operator liveness endpoint")
        wait_for(lambda: "omega-vlm-operator started" in self.operator_log(), 30, "operator start-up line")

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--wait", "--timeout", "120s")
        self.installed = False


def install(cluster: Cluster, name: str, namespace: str, tag: str, sets: list[str], tmp: Path) -> Release:
    """`helm install` the chart, then make its operator image runnable with the SA's token.

    The image tag is unique to the caller, so the image map entry touches no other test. Until the
    process kubelet knows the image the operator pod waits in ErrImagePull, as on a cluster whose
    registry has not got the image yet.
    """
    liveness, metrics = free_port(), free_port()
    args = [
        "install",
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--create-namespace",
        "--set",
        f"operator.image.tag={tag}",
        # The operator runs as a host process here: give it ports no other test uses.
        "--set",
        f"operator.liveness.port={liveness}",
        "--set",
        f"operator.metrics.port={metrics}",
        # devcluster has no cluster DNS: the test pod reaches the operator on the host.
        "--set",
        f"tests.livenessUrl=http://127.0.0.1:{liveness}/healthz",
    ]
    for s in sets:
        args += ["--set", s]
    out = run_helm(*args, kubeconfig=cluster.kubeconfig).stdout
    release = Release(cluster, name, namespace, Path(), liveness, metrics, out)
    release.sa_kubeconfig = sa_kubeconfig(cluster, namespace, release.fullname, tmp / "kubeconfig")
    cluster.add_image(
        f"{OPERATOR_REPOSITORY}:{tag}",
        [sys.executable, "-m", "omega_operator"],
        # No KUBECONFIG: the pods use their ServiceAccount's mounted token (in-cluster config), as
        # in a real cluster; the operator pod's /tmp is an emptyDir, so a file there is not seen.
        env={
            # `python` for the helm test pod's command.
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
    )
    return release


def omegavlm(name: str, namespace: str, model_dir: Path, tag: str) -> dict[str, Any]:
    """An OmegaVLM serving a tiny checkpoint, flash first (``attention: auto``)."""
    return {
        "apiVersion": "vlm.omega.io/v1alpha1",
        "kind": "OmegaVLM",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "tiny", "uri": f"file://{model_dir}"},
            "replicas": 1,
            "image": {"repository": SERVER_REPO, "tag": tag},
            "attention": "auto",
            "runtime": {"maxBatchSize": 2, "maxModelLength": 512, "dtype": "float32"},
            "gpu": {"count": 1},
        },
    }


def wait_fallback(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """Wait until the OmegaVLM is Ready on sdpa after a recorded flash fallback; return it."""

    def done() -> dict[str, Any] | None:
        obj = cluster.get("omegavlm", name, "-n", namespace)
        status = obj.get("status") or {}
        attention = status.get("attention") or {}
        ok = (
            attention.get("fallback") and attention.get("active") == "sdpa" and status.get("phase") == "Ready"
        )
        return obj if ok else None

    return wait_for(done, 240, f"{namespace}/{name} Ready on sdpa after a fallback", interval=1)


def leftovers(cluster: Cluster, release: str, namespaces: list[str]) -> list[str]:
    """Objects of the release still there: in its namespaces, or labelled with it cluster-wide."""
    kinds = "deployments,replicasets,pods,services,serviceaccounts,configmaps,secrets,roles,rolebindings,jobs"
    found = []
    for ns in namespaces:
        for item in cluster.get(kinds, "-n", ns)["items"]:
            name = item["metadata"]["name"]
            if name in ("default", "kube-root-ca.crt") or name.startswith("default-token-"):
                continue
            found.append(f"{item['kind']}/{ns}/{name}")
    labelled = cluster.get(
        "clusterroles,clusterrolebindings,configmaps,roles,rolebindings",
        "-A",
        "-l",
        f"app.kubernetes.io/instance={release}",
    )
    found += [f"{i['kind']}/{i['metadata']['name']}" for i in labelled["items"]]
    return found


def build_tiny_model(out: Path) -> Path:
    """A tiny random VLM checkpoint written by the server's own tool."""
    subprocess.run(
        [sys.executable, "-m", "omega_server.tiny", "--arch", "qwen2_vl", "--out", str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    return out
