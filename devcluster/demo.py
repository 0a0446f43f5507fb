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

from devcluster.cluster import Cluster, ClusterError
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


@step("The control plane")
def _control_plane(c: Cluster) -> None:
    show(c, "version", "--output=yaml")
    show(c, "get", "--raw=/readyz?verbose")


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


def _banner(title: str) -> None:
    print(f"\n==> {title}\n", flush=True)


def usage(c: Cluster) -> str:
    """How to use and stop the running cluster."""
    py = shlex.quote(sys.executable)
    return (
        "devcluster is running and stays up.\n"
        f"  export KUBECONFIG={c.kubeconfig}\n"
        "  kubectl get nodes -L nvidia.com/gpu.product\n"
        f"  {py} -m devcluster status      # processes and nodes\n"
        f"  {py} -m devcluster logs NS/POD # a pod's output (the process kubelet keeps it)\n"
        f"  {py} -m devcluster down        # stop everything\n"
        f"  logs: {c.layout.logs}"
    )


def run_demo(steps: list[Step] | None = None) -> int:
    """Start (or reuse) the cluster in ``.devcluster``, run the steps, leave it running."""
    state = default_state_dir()
    t0 = time.monotonic()
    try:
        cluster = Cluster.attach(state)
        _banner(f"Using the running devcluster ({cluster.server})")
    except ClusterError:
        _banner(
            "Starting devcluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, process kubelet)"
        )
        cluster = Cluster.start(state, pod_prefix=42)
        print(f"ready in {time.monotonic() - t0:.1f} s: {cluster.server}", flush=True)
    for s in steps if steps is not None else STEPS:
        _banner(s.title)
        s.run(cluster)
    _banner("Done")
    print(usage(cluster), flush=True)
    return 0
