"""The process kubelet: pods bound to devcluster nodes run as local processes with kubelet-like status."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import httpx
import pytest

from devcluster import Cluster
from devcluster.procs import alive

pytestmark = pytest.mark.devcluster

HTTP_IMAGE = "devcluster-test/http-server"
CRASH_IMAGE = "devcluster-test/crasher"

# Prints its environment's interesting part, then serves HTTP on $HOST:$PORT.
HTTP_SERVER = (
    "import http.server, os, sys\n"
    "print('env', os.environ['HOST'], os.environ.get('FROM_CM'), os.environ.get('FROM_SECRET'),"
    " os.environ.get('MY_IP'), os.environ.get('MY_NODE'), flush=True)\n"
    "http.server.ThreadingHTTPServer((os.environ['HOST'], int(os.environ['PORT'])),"
    " http.server.SimpleHTTPRequestHandler).serve_forever()\n"
)
CRASHER = "import sys\nprint('loading model ...', flush=True)\nprint('fatal: MODEL_PATH /nope does not exist', file=sys.stderr)\nsys.exit(3)\n"


@pytest.fixture(scope="module")
def ns(devcluster: Cluster) -> str:
    name = f"dc-kubelet-{uuid.uuid4().hex[:6]}"
    devcluster.kubectl("create", "namespace", name)
    devcluster.add_image(HTTP_IMAGE, [sys.executable, "-c", HTTP_SERVER], env={"PYTHONUNBUFFERED": "1"})
    devcluster.add_image(CRASH_IMAGE, [sys.executable, "-c", CRASHER])
    return name


def _pod(devcluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return devcluster.get("pod", name, "-n", ns)


def _status(devcluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return _pod(devcluster, ns, name).get("status", {})


def _container_pid(devcluster: Cluster, ns: str, pod: str) -> int:
    pids = [pid for key, pid in devcluster.pids().items() if key.startswith(f"pod:{ns}/{pod}/")]
    assert len(pids) == 1, devcluster.pids()
    return pids[0]


def test_http_server_pod_runs_to_ready_on_its_own_pod_ip(devcluster: Cluster, ns: str) -> None:
    devcluster.kubectl("create", "configmap", "cfg", "-n", ns, "--from-literal=greeting=hello")
    devcluster.kubectl("create", "secret", "generic", "sec", "-n", ns, "--from-literal=token=s3cret")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "cpu-0"},
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "web",
                    "image": f"registry.example.com/{HTTP_IMAGE}:v1",
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "env": [
                        {"name": "PORT", "value": "8000"},
                        {
                            "name": "FROM_CM",
                            "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}},
                        },
                        {
                            "name": "FROM_SECRET",
                            "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}},
                        },
                        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    ],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    "livenessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 2},
                }
            ],
        },
    }
    devcluster.apply(pod)

    def ready() -> dict[str, Any] | None:
        st = _status(devcluster, ns, "web")
        conds = {c["type"]: c["status"] for c in st.get("conditions", [])}
        return st if conds.get("Ready") == "True" else None

    st = devcluster.wait_for(ready, timeout=30, what="web Ready")
    ip = st["podIP"]
    assert ip.startswith(devcluster.pod_prefix + ".") and st["podIPs"] == [{"ip": ip}]
    assert st["phase"] == "Running"
    cs = st["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0 and "running" in cs["state"]
    assert httpx.get(f"http://{ip}:8000/", trust_env=False).status_code == 200
    assert f"env {ip} hello s3cret {ip} cpu-0" in devcluster.pod_log(ns, "web")
    # kubectl logs goes apiserver -> the node's kubelet endpoint -> the process's output.
    assert f"env {ip} hello" in devcluster.kubectl("logs", "web", "-n", ns).stdout
    # Deleting the pod stops its process gracefully and the pod object goes away.
    pid = _container_pid(devcluster, ns, "web")
    devcluster.kubectl("delete", "pod", "web", "-n", ns, "--timeout=30s")
    assert devcluster.kubectl("get", "pod", "web", "-n", ns, check=False).returncode != 0
    devcluster.wait_for(lambda: not alive(pid), timeout=10, what="web process gone")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{ip}:8000/", trust_env=False, timeout=2)


def test_crashing_container_restarts_with_termination_message(devcluster: Cluster, ns: str) -> None:
    devcluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "crasher", "namespace": ns},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": f"{CRASH_IMAGE}:v1",
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }
                ]
            },
        }
    )

    def restarted_twice() -> dict[str, Any] | None:
        cs = (_status(devcluster, ns, "crasher").get("containerStatuses") or [{}])[0]
        return cs if cs.get("restartCount", 0) >= 2 and cs.get("lastState", {}).get("terminated") else None

    cs = devcluster.wait_for(restarted_twice, timeout=30, what="restartCount >= 2")
    term = cs["lastState"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert "fatal: MODEL_PATH /nope does not exist" in term["message"]
    assert "fatal: MODEL_PATH" in devcluster.kubectl("logs", "crasher", "-n", ns, "--previous").stdout
    waiting = devcluster.wait_for(
        lambda: _status(devcluster, ns, "crasher")["containerStatuses"][0]["state"].get("waiting"),
        what="waiting",
    )
    assert waiting["reason"] in ("CrashLoopBackOff", "Error", "ContainerCreating")
    reasons = {e["reason"] for e in devcluster.get("events", "-n", ns)["items"]}
    assert "BackOff" in reasons
    devcluster.kubectl("delete", "pod", "crasher", "-n", ns, "--wait=false")


def test_unknown_image_reports_image_pull_errors(devcluster: Cluster, ns: str) -> None:
    devcluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "nopull", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "registry.example.com/not-mapped:1"}]},
        }
    )
    reasons: set[str] = set()

    def pull_backoff() -> bool:
        st = _status(devcluster, ns, "nopull")
        waiting = (st.get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        reasons.add(waiting.get("reason", ""))
        return waiting.get("reason") == "ImagePullBackOff"

    devcluster.wait_for(pull_backoff, timeout=20, interval=0.1, what="ImagePullBackOff")
    assert _status(devcluster, ns, "nopull")["phase"] == "Pending"
    assert not [k for k in devcluster.pids() if k.startswith(f"pod:{ns}/nopull/")]
    assert "waiting to start" in devcluster.kubectl("logs", "nopull", "-n", ns, check=False).stderr
    devcluster.kubectl("delete", "pod", "nopull", "-n", ns, "--wait=false")


def test_failing_liveness_probe_restarts_the_container(devcluster: Cluster, ns: str) -> None:
    devcluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "unlive", "namespace": ns},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "c",
                        "image": "devcluster-test/sleep:1",
                        "command": ["sleep", "600"],
                        "livenessProbe": {
                            "tcpSocket": {"port": 9},
                            "periodSeconds": 1,
                            "failureThreshold": 2,
                        },
                    }
                ],
            },
        }
    )
    devcluster.add_image("devcluster-test/sleep", ["sleep", "3600"])

    def restarted() -> dict[str, Any] | None:
        cs = (_status(devcluster, ns, "unlive").get("containerStatuses") or [{}])[0]
        return cs if cs.get("restartCount", 0) >= 1 else None

    cs = devcluster.wait_for(restarted, timeout=30, what="liveness restart")
    assert cs["lastState"]["terminated"]["exitCode"] in (137, 143)
    reasons = {
        e["reason"]
        for e in devcluster.get("events", "-n", ns)["items"]
        if e["involvedObject"]["name"] == "unlive"
    }
    assert {"Unhealthy", "Killing"} <= reasons
    devcluster.kubectl("delete", "pod", "unlive", "-n", ns, "--wait=false")


def test_deployment_pods_count_ready_and_roll(devcluster: Cluster, ns: str) -> None:
    """The operator's path: Deployment -> ReplicaSet -> pods run by the kubelet -> readyReplicas."""

    def deployment(image_tag: str) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "srv", "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "srv"}},
                "template": {
                    "metadata": {"labels": {"app": "srv"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "srv",
                                "image": f"{HTTP_IMAGE}:{image_tag}",
                                "env": [{"name": "PORT", "value": "8000"}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": 8000},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        }

    devcluster.apply(deployment("v1"))
    devcluster.kubectl("rollout", "status", "deployment/srv", "-n", ns, "--timeout=60s")
    dep = devcluster.get("deployment", "srv", "-n", ns)
    assert dep["status"]["readyReplicas"] == 2
    pods = devcluster.get("pods", "-n", ns, "-l", "app=srv")["items"]
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2
    # A new image rolls the pods; the old processes are stopped.
    old_pids = [pid for key, pid in devcluster.pids().items() if key.startswith(f"pod:{ns}/srv-")]
    devcluster.apply(deployment("v2"))
    devcluster.kubectl("rollout", "status", "deployment/srv", "-n", ns, "--timeout=60s")
    devcluster.wait_for(lambda: not any(alive(p) for p in old_pids), timeout=20, what="old pods stopped")
    devcluster.kubectl("delete", "deployment", "srv", "-n", ns, "--wait=false")


def test_pods_get_their_service_account_credentials(devcluster: Cluster, ns: str) -> None:
    """KUBECONFIG in the container holds a token of the pod's ServiceAccount: RBAC applies to it."""
    devcluster.add_image("devcluster-test/kubectl", ["kubectl"])
    devcluster.kubectl("create", "serviceaccount", "reader", "-n", ns)
    devcluster.kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", ns)
    devcluster.kubectl(
        "create", "rolebinding", "reader", "--role=pod-reader", f"--serviceaccount={ns}:reader", "-n", ns
    )
    for name, sa in (("as-default", "default"), ("as-reader", "reader")):
        devcluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "serviceAccountName": sa,
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "c",
                            "image": "devcluster-test/kubectl:1",
                            "args": ["get", "pods", "-o", "name"],
                        }
                    ],
                },
            }
        )

    def finished(name: str) -> dict[str, Any] | None:
        st = _status(devcluster, ns, name)
        return st if st.get("phase") in ("Succeeded", "Failed") else None

    denied = devcluster.wait_for(lambda: finished("as-default"), timeout=30, what="as-default done")
    allowed = devcluster.wait_for(lambda: finished("as-reader"), timeout=30, what="as-reader done")
    assert denied["phase"] == "Failed"
    assert f"system:serviceaccount:{ns}:default" in devcluster.pod_log(ns, "as-default")
    assert allowed["phase"] == "Succeeded", devcluster.pod_log(ns, "as-reader")
    assert "pod/as-reader" in devcluster.pod_log(ns, "as-reader")
