"""Node loss on devcluster: a node's heartbeats stop; its OmegaVLM pod moves to another Hopper node.

The cluster runs with shortened node-loss timeouts (:data:`TIMINGS`, passed to ``Cluster.start``:
node-monitor grace period 20 s instead of Kubernetes' 40 s, pods' default not-ready/unreachable
toleration 5 s instead of 300 s; node heartbeats every ``TEST_KUBELET.lease_renew_s``). One run:

1. an OmegaVLM (attention sdpa, the real server on the tiny checkpoint) is Ready with one pod;
2. the heartbeats of that pod's node stop (:meth:`devcluster.Cluster.pause_heartbeats`);
3. we time: the node NotReady (the node-lifecycle controller in the controller manager), the pod
   evicted (its taint manager), a new pod Ready on another Hopper node, the OmegaVLM Ready again;
4. the heartbeats resume (the node turns Ready again).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devcluster import Cluster
from tests.e2e.fallback_support import (
    SDPA_IMAGE,
    OperatorProcess,
    get_json,
    make_namespace,
    omegavlm,
    ovlm,
    pods,
    wait_for,
)

TIMINGS = {"grace_s": 20.0, "toleration_s": 5.0}
HOPPER = {"h100-sxm-0", "h100-pcie-0", "h200-0"}
NAME = "nodeloss"


@dataclass
class NodeLossRun:
    """What one run saw; times in seconds from the moment the heartbeats stopped."""

    lost_node: str = ""
    new_node: str = ""
    not_ready_s: float | None = None
    evicted_s: float | None = None
    new_pod_ready_s: float | None = None
    omegavlm_ready_s: float | None = None
    omegavlm_left_ready: bool = False
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ready(obj: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") == "True"


def run_node_loss(cluster: Cluster, model_dir: Path, workdir: Path, timeout: float = 240.0) -> NodeLossRun:
    """One node-loss run in a namespace of its own (deleted at the end)."""
    run = NodeLossRun()
    ns = make_namespace(cluster, "nodeloss")
    op = OperatorProcess(cluster, ns, workdir / "operator-nodeloss.log").start()
    try:
        cluster.apply(omegavlm(NAME, ns, model_dir, attention="sdpa"))

        def first_pod() -> dict[str, Any] | None:
            live = [
                p
                for p in pods(cluster, ns)
                if _ready(p) and p["spec"]["containers"][0]["image"] == SDPA_IMAGE
            ]
            ready = (ovlm(cluster, ns, NAME).get("status") or {}).get("phase") == "Ready"
            return live[0] if len(live) == 1 and ready else None

        pod = wait_for(first_pod, 300, "OmegaVLM Ready with one pod", interval=0.5)
        run.lost_node, old_uid = pod["spec"]["nodeName"], pod["metadata"]["uid"]
        cluster.pause_heartbeats(run.lost_node)
        t0 = time.monotonic()
        deadline = t0 + timeout
        while time.monotonic() < deadline and run.omegavlm_ready_s is None:
            now = time.monotonic() - t0
            try:
                node = get_json(cluster, "node", run.lost_node)
                current = pods(cluster, ns)
                phase = (ovlm(cluster, ns, NAME).get("status") or {}).get("phase")
            except Exception:  # a kubectl hiccup under load: poll again
                time.sleep(0.5)
                continue
            if run.not_ready_s is None and not _ready(node):
                run.not_ready_s = now
            old = [p for p in current if p["metadata"]["uid"] == old_uid]
            if run.evicted_s is None and (not old or old[0]["metadata"].get("deletionTimestamp")):
                run.evicted_s = now
            if phase != "Ready":
                run.omegavlm_left_ready = True
            new = [
                p
                for p in current
                if p["metadata"]["uid"] != old_uid
                and not p["metadata"].get("deletionTimestamp")
                and _ready(p)
            ]
            if run.new_pod_ready_s is None and new:
                run.new_pod_ready_s, run.new_node = now, new[0]["spec"]["nodeName"]
            if run.new_pod_ready_s is not None and phase == "Ready":
                run.omegavlm_ready_s = now
            time.sleep(0.5)
        for what in ("not_ready_s", "evicted_s", "new_pod_ready_s", "omegavlm_ready_s"):
            if getattr(run, what) is None:
                run.violations.append(f"{what.removesuffix('_s')} not within {timeout:.0f} s")
        if run.new_node and (run.new_node == run.lost_node or run.new_node not in HOPPER):
            run.violations.append(f"rescheduled onto {run.new_node} (lost: {run.lost_node})")
        if op.proc is None or op.proc.poll() is not None:
            run.violations.append("the operator process exited")
    finally:
        cluster.pause_heartbeats(run.lost_node, paused=False) if run.lost_node else None
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return run
