"""``python -m devcluster demo``: start the cluster and show it at work, one step after another.

The demo is a list of :class:`Step`; later parts of the project append their own steps
(``STEPS.append(Step(...))`` or :func:`step` as a decorator). The cluster stays running afterwards.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from devcluster.cluster import Cluster, ClusterError
from devcluster.prometheus import PrometheusConfig
from devcluster.settings import default_state_dir


@dataclass(frozen=True)
class Step:
    """One demo step: a title and what it does with the running cluster."""

    title: str
    run: Callable[[Cluster], None]


STEPS: list[Step] = []


def step(title: str) -> Callable[[Callable[[Cluster], None]], Callable[[Cluster], None]]:
    """Decorator: append the function as a demo step."""

    def register(fn: Callable[[Cluster], None]) -> Callable[[Cluster], None]:
        STEPS.append(Step(title, fn))
        return fn

    return register


def show(cluster: Cluster, *args: str) -> str:
    """Print and run one kubectl command, like a person typing it."""
    print(f"$ kubectl {shlex.join(args)}", flush=True)
    out = cluster.kubectl(*args, check=False)
    text = out.stdout + (out.stderr if out.returncode else "")
    print(text.rstrip() + "\n", flush=True)
    return text


@step("The control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (Kubernetes v1.20.2)")
def _control_plane(c: Cluster) -> None:
    print(c.status_text() + "\n", flush=True)
    show(c, "get", "--raw=/readyz")
    show(c, "cluster-info")


@step("Fake GPU nodes with GPU Feature Discovery labels")
def _nodes(c: Cluster) -> None:
    show(
        c,
        "get",
        "nodes",
        "-L",
        "nvidia.com/gpu.product",
        "-L",
        "nvidia.com/gpu.count",
        "-L",
        "nvidia.com/gpu.family",
    )
    show(
        c, "get", "nodes", "-o",
        "custom-columns=NODE:.metadata.name,GPUS:.status.allocatable.nvidia\\.com/gpu,TAINTS:.spec.taints[*].key",
    )  # fmt: skip


DEMO_IMAGE = "devcluster-demo/http-server"


@step("The process kubelet: a pod asking for one H100 GPU is scheduled and runs as a local process")
def _gpu_pod(c: Cluster) -> None:
    # The image map turns this image into a local command; the pod's address is its own 127.x IP.
    c.add_image(DEMO_IMAGE, [sys.executable, "-m", "http.server", "8000", "--bind", "$(HOST)"])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gpu-demo", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": f"registry.example.com/{DEMO_IMAGE}:v1",
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 1},
                }
            ],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "nvidia.com/gpu.product",
                                        "operator": "In",
                                        "values": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
        },
    }
    c.kubectl("delete", "pod", "gpu-demo", "--ignore-not-found", "--wait=true", check=False)
    c.apply(pod)
    show(c, "wait", "--for=condition=Ready", "pod/gpu-demo", "--timeout=60s")
    show(c, "get", "pod", "gpu-demo", "-o", "wide")
    ip = c.get("pod", "gpu-demo")["status"]["podIP"]
    code = httpx.get(f"http://{ip}:8000/", trust_env=False, timeout=5).status_code
    print(f"$ curl http://{ip}:8000/   -> HTTP {code} from the pod's own process\n", flush=True)
    show(c, "delete", "pod", "gpu-demo")


def _banner(title: str) -> None:
    print(f"\n==> {title}\n", flush=True)


#: (PromQL, what it shows): printed with the Prometheus URL at the end of the demo; later parts add theirs.
QUERIES: list[tuple[str, str]] = [("up", "every scrape target (1 = scraped)")]


def usage(c: Cluster) -> str:
    """How to use and stop the running cluster (and its Prometheus, with queries to paste)."""
    py = shlex.quote(sys.executable)
    text = (
        "devcluster is running and stays up.\n"
        f"  export KUBECONFIG={c.kubeconfig}\n"
        "  kubectl get nodes -L nvidia.com/gpu.product\n"
        f"  {py} -m devcluster status      # processes and nodes\n"
        f"  {py} -m devcluster logs NS/POD # a pod's output (the process kubelet keeps it)\n"
        f"  {py} -m devcluster down        # stop everything\n"
        f"  logs: {c.layout.logs}"
    )
    if not c.prometheus_url:
        return (
            text
            + "\n(no Prometheus: `python -m devcluster down`, then `make demo` starts the cluster with one)"
        )
    width = max(len(q) for q, _ in QUERIES)
    queries = "\n".join(f"  {q:<{width}}  # {what}" for q, what in QUERIES)
    return (
        f"{text}\n\nPrometheus runs with the cluster (`devcluster down` stops it): {c.prometheus_url}/graph\n"
        f"Paste into its expression box (or: curl -s {c.prometheus_url}/api/v1/query --data-urlencode 'query=...'):\n"
        f"{queries}"
    )


def run_demo(steps: list[Step] | None = None, prometheus: PrometheusConfig | None = None) -> int:
    """Start (or reuse) the cluster in ``.devcluster``, run the steps, leave it running.

    ``prometheus``: start a new cluster with Prometheus (a running one is reused as it is).
    """
    state = default_state_dir()
    t0 = time.monotonic()
    try:
        cluster = Cluster.attach(state)
        _banner(f"Using the running devcluster ({cluster.server})")
    except ClusterError:
        _banner(
            "Starting devcluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, process kubelet)"
        )
        cluster = Cluster.start(state, pod_prefix=42, prometheus=prometheus)
        print(f"ready in {time.monotonic() - t0:.1f} s: {cluster.server}", flush=True)
    if steps is None:
        import devcluster.demo_omega  # noqa: F401  (registers the omega-vlm steps after these)
    for s in steps if steps is not None else STEPS:
        _banner(s.title)
        s.run(cluster)
    _banner("Done")
    print(usage(cluster), flush=True)
    return 0
