"""A fault injected into the operator's loop on devcluster at a chosen moment: nothing done twice, nothing lost.

One iteration, on devcluster with the real operator and inference-server processes (tiny checkpoint, CPU:
flash-attn cannot load, so a flash pod's ``/health`` reports the failure the operator acts on):

1. an OmegaVLM is created: ``attention: auto`` (a flash->sdpa rollback follows) or ``attention: sdpa``
   (a plain reconcile); a Deployment watch (re-listing after errors) records every spec version;
2. the window opens at the first failing ``/health`` of a flash pod (polled by us at ``podIP:8000``), or
   for sdpa at the create; it closes when the OmegaVLM is Ready on sdpa;
3. the fault comes at a trigger: a delay after the window opened (the benchmark draws it at random) or the
   moment a phase is reached (``recorded``: the fallback record is in the status; ``moved``: the
   Deployment is on sdpa). Faults: ``operator`` (SIGKILL, then a new operator process at once),
   ``kube-apiserver`` or ``etcd`` (stopped, kept down a few seconds, started again by devcluster's
   supervisor, :meth:`devcluster.Cluster.restart_component`; the operator is not restarted);
4. the iteration waits for Ready on sdpa, lets a few probe intervals pass and checks: the Deployment's
   server image written once per variant (flash -> sdpa, or sdpa alone: no second image write), the
   revision, one fallback record (unchanged), the status consistent (Ready, variant/active/image sdpa,
   FlashAttentionDegraded as expected), at most one Event, and for a control-plane fault that the
   operator process is the one started first (it converged without a restart of its own).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omega_operator.health_report import parse_report

from devcluster import Cluster
from tests.e2e.fallback_support import (
    FLASH_IMAGE,
    PROBE_INTERVAL,
    SDPA_IMAGE,
    OperatorProcess,
    all_ready_on,
    condition,
    deployment,
    events,
    make_namespace,
    omegavlm,
    ovlm,
    pods,
    replica_set_images,
    server_container,
    wait_for,
)

NAME = "faulted"
SERVER_PORT = 8000  # omega_operator.builders.CONTAINER_PORT
PHASES = ("window_open", "recorded", "moved")
FAULTS = ("none", "operator", "kube-apiserver", "etcd")
DOWN_S = 5.0  # how long a restarted control-plane process stays down
STARTUP_S = 3.0  # after the operator's start-up line: kopf resolves its resources and starts watching


def _changed_paths(old: Any, new: Any, path: str = "spec") -> list[str]:
    """The dotted paths where two Deployment specs differ (lists compared item by item)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            p
            for k in sorted(set(old) | set(new))
            for p in _changed_paths(old.get(k), new.get(k), f"{path}.{k}")
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            p
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for p in _changed_paths(a, b, f"{path}[{i}]")
        ]
    return [] if old == new else [path]


class DeploymentWatch:
    """Every spec version (generation, server image) of the Deployments of one namespace, from a watch."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        from kubernetes import client, watch

        self._apps = client.AppsV1Api(cluster.api_client())
        self._watch = watch.Watch()
        self.namespace = namespace
        self.versions: list[tuple[int, str]] = []  # (metadata.generation, server image), in watch order
        self.changes: list[list[str]] = []  # the spec fields each new generation changed
        self._last_spec: dict[str, Any] | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> DeploymentWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                for ev in self._watch.stream(
                    self._apps.list_namespaced_deployment, self.namespace, timeout_seconds=900
                ):
                    self._record(ev["object"].to_dict())
            except Exception:  # the API server restarting: list and watch again
                time.sleep(0.5)

    def _record(self, dep: dict[str, Any]) -> None:
        gen = int(dep["metadata"].get("generation") or 0)
        containers = dep["spec"]["template"]["spec"]["containers"]
        image = next((c["image"] for c in containers if c["name"] == "server"), containers[0]["image"])
        if all(g != gen for g, _ in self.versions):  # a re-list sends the same version again
            self.versions.append((gen, image))
            if self._last_spec is not None:
                self.changes.append(_changed_paths(self._last_spec, dep["spec"]))
            self._last_spec = dep["spec"]

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()

    @property
    def image_writes(self) -> list[str]:
        """The server image after each change of it (the create counts as the first)."""
        out: list[str] = []
        for _gen, image in self.versions:
            if not out or out[-1] != image:
                out.append(image)
        return out


def flash_health_failing(cluster: Cluster, namespace: str) -> bool:
    """Whether a flash pod answers ``/health`` with a flash failure (parsed by the operator's own model)."""
    for p in pods(cluster, namespace):
        ip = (p.get("status") or {}).get("podIP")
        if not ip or p["spec"]["containers"][0]["image"] != FLASH_IMAGE:
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:{SERVER_PORT}/health", timeout=1.0) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:  # 503 while loading still has a health body
            body = e.read()
        except OSError:
            continue
        report = parse_report(body)
        if report is not None and report.flash_failed:
            return True
    return False


def phase_now(cluster: Cluster, namespace: str) -> str:
    """Where the rollback stands: window_open, recorded (status record, Deployment on flash), moved
    (Deployment on sdpa, not Ready yet) or ready."""
    obj = ovlm(cluster, namespace, NAME)
    status = obj.get("status") or {}
    dep = deployment(cluster, namespace, NAME)
    on_sdpa = dep is not None and server_container(dep)["image"] == SDPA_IMAGE
    if status.get("phase") == "Ready" and (status.get("attention") or {}).get("active") == "sdpa":
        return "ready"
    if on_sdpa:
        return "moved"
    if (status.get("attention") or {}).get("fallback"):
        return "recorded"
    return "window_open"


def _reached(cluster: Cluster, namespace: str, phase: str) -> bool:
    order = (*PHASES, "ready")
    return order.index(phase_now(cluster, namespace)) >= order.index(phase)


@dataclass
class FaultRun:
    """What one iteration did and saw."""

    index: int
    fault: str
    attention: str
    trigger: str  # "delay:<s>" or "phase:<name>"
    namespace: str = ""
    window_open_s: float = 0.0  # from the create to the first failing /health (0 for sdpa)
    fault_after_s: float = 0.0  # from the window opening to the fault
    phase_at_fault: str = ""
    ready_after_fault_s: float = 0.0  # from the fault to Ready on sdpa (restart included)
    image_writes: list[str] = field(default_factory=list)
    spec_generations: int = 0
    spec_changes: list[list[str]] = field(default_factory=list)  # per generation after the first
    fallback_records: int = 0
    events: int = 0
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status_violations(obj: dict[str, Any], rollback: bool) -> list[str]:
    status = obj.get("status") or {}
    att = status.get("attention") or {}
    fb = att.get("fallback") or {}
    bad = []
    if status.get("phase") != "Ready":
        bad.append(f"phase {status.get('phase')}")
    if att.get("active") != "sdpa" or status.get("variant") != "sdpa" or status.get("image") != SDPA_IMAGE:
        bad.append(f"status not on sdpa: {att.get('active')}, {status.get('variant')}, {status.get('image')}")
    degraded = condition(obj, "FlashAttentionDegraded")
    if rollback:
        if fb.get("reason") != "FlashAttentionLoadFailed" or (fb.get("fromImage"), fb.get("toImage")) != (
            FLASH_IMAGE,
            SDPA_IMAGE,
        ):
            bad.append(f"fallback record {fb}")
        if degraded is None or degraded.get("status") != "True":
            bad.append(f"FlashAttentionDegraded {degraded}")
    elif fb or (degraded is not None and degraded.get("status") == "True"):
        bad.append(f"a fallback without flash: {fb} {degraded}")
    return bad


def _inject(fault: str, cluster: Cluster, op: OperatorProcess) -> OperatorProcess | None:
    """Do the fault; returns the operator process started after a SIGKILL (None otherwise).
    ``none``: nothing (the benchmark's calibration run, which measures the window)."""
    if fault == "none":
        return None
    if fault == "operator":
        assert op.proc is not None
        op.proc.kill()  # SIGKILL: no shutdown of any kind
        op.proc.wait(timeout=10)
        return OperatorProcess(
            cluster, op.namespace, op.log_path.with_name(op.log_path.stem + "-b.log")
        ).start()
    cluster.restart_component(fault, down_s=DOWN_S)
    return None


def run_iteration(
    cluster: Cluster,
    model_dir: Path,
    workdir: Path,
    index: int,
    *,
    fault: str = "operator",
    attention: str = "auto",
    delay_s: float | None = None,
    phase: str = "",
) -> FaultRun:
    """One fault iteration in a namespace of its own (deleted at the end)."""
    trigger = f"delay:{delay_s:.2f}" if delay_s is not None else f"phase:{phase}"
    run = FaultRun(index=index, fault=fault, attention=attention, trigger=trigger)
    rollback = attention == "auto"
    ns = run.namespace = make_namespace(cluster, f"fault{index}")
    first = OperatorProcess(cluster, ns, workdir / f"operator-{index}.log").start()
    second: OperatorProcess | None = None
    watch = DeploymentWatch(cluster, ns).start()
    records: list[str] = []
    try:
        # The operator first, serving: a fault during its own start-up is another experiment. (Found
        # with this one: an API server restart while kopf resolves its resources leaves the operator
        # serving nothing until it restarts; see bench/README.md, control-plane.)
        wait_for(lambda: "omega-vlm-operator started" in first.log(), 60, "the operator started")
        time.sleep(STARTUP_S)
        t0 = time.monotonic()
        cluster.apply(omegavlm(NAME, ns, model_dir, attention=attention))
        if rollback:
            wait_for(
                lambda: flash_health_failing(cluster, ns), 300, "a flash pod's /health failing", interval=0.2
            )
        opened = time.monotonic()
        run.window_open_s = opened - t0
        if delay_s is not None:
            time.sleep(delay_s)
        elif phase != "window_open":
            wait_for(lambda: _reached(cluster, ns, phase), 240, f"phase {phase}", interval=0.1)
        run.phase_at_fault = phase_now(cluster, ns)
        at = time.monotonic()
        run.fault_after_s = at - opened
        second = _inject(fault, cluster, first)

        def ready() -> bool:
            fb = (ovlm(cluster, ns, NAME).get("status") or {}).get("attention", {}).get("fallback")
            if fb and json.dumps(fb, sort_keys=True) not in records:
                records.append(json.dumps(fb, sort_keys=True))
            return phase_now(cluster, ns) == "ready" and all_ready_on(cluster, ns, SDPA_IMAGE, 1)

        wait_for(ready, 300, "Ready on sdpa after the fault", interval=0.5)
        run.ready_after_fault_s = time.monotonic() - at
        time.sleep(3 * PROBE_INTERVAL + 1)  # a few refresh rounds: nothing may move
        ready()
        obj = ovlm(cluster, ns, NAME)
        run.image_writes = watch.image_writes
        run.spec_generations = len(watch.versions)
        run.spec_changes = watch.changes
        run.fallback_records = len(records)
        run.events = len(events(cluster, ns, "FlashAttentionFallback"))
        want = [FLASH_IMAGE, SDPA_IMAGE] if rollback else [SDPA_IMAGE]
        if run.image_writes != want:
            run.violations.append(f"Deployment image writes {run.image_writes}")
        if replica_set_images(cluster, ns) != set(want):
            run.violations.append(f"ReplicaSet images {replica_set_images(cluster, ns)}")
        dep = deployment(cluster, ns, NAME) or {}
        revision = (dep.get("metadata") or {}).get("annotations", {}).get("deployment.kubernetes.io/revision")
        if revision != str(len(want)):
            run.violations.append(f"Deployment revision {revision}")
        if run.fallback_records != int(rollback):
            run.violations.append(f"{run.fallback_records} distinct fallback records")
        if run.events > 1:
            run.violations.append(f"{run.events} FlashAttentionFallback Events")
        run.violations.extend(_status_violations(obj, rollback))
        if second is None and (first.proc is None or first.proc.poll() is not None):
            run.violations.append("the operator process exited after the control-plane fault")
        for op in (first, second):
            if op is not None and "Traceback" in op.log():
                run.violations.append(f"traceback in {op.log_path.name}")
    except (TimeoutError, AssertionError, RuntimeError) as e:
        run.violations.append(f"{type(e).__name__}: {e}")
    finally:
        watch.stop()
        first.stop()
        if second is not None:
            second.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    return run
