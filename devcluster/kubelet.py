"""The process kubelet: runs the containers of pods bound to devcluster nodes as local processes.

One worker thread per pod. Each container is a process in its own process group, on the pod's own
loopback address (given as ``HOST`` and reported as ``status.podIP``). Probes run, restarts follow
``restartPolicy`` with the kubelet's exponential back-off, and status is written like a kubelet's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devcluster import images, pki, podenv
from devcluster.apiclient import Api, ApiError
from devcluster.nodes import now_iso
from devcluster.podstatus import ContainerView, pod_status, tail_message
from devcluster.probes import ProbeTracker, run_probe
from devcluster.procs import PidRegistry, proc_start_ticks, signal_group, spawn, stop_pid

log = logging.getLogger("devcluster.kubelet")

# Host environment a container process inherits (a container sees none of the host's; a local
# process needs at least these to run, and OMP_NUM_THREADS keeps tiny models fast on small machines).
PASSTHROUGH_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
PASSTHROUGH_PREFIXES = ("HF_", "TRANSFORMERS_")


@dataclass
class KubeletConfig:
    """Knobs of the process kubelet."""

    backoff_base_s: float = 10.0  # the kubelet's crash-loop back-off: 0, base, 2*base, ... up to max
    backoff_max_s: float = 300.0
    max_grace_s: float = 30.0  # cap on terminationGracePeriodSeconds
    tick_s: float = 0.25
    list_interval_s: float = 0.5
    lease_renew_s: float = 10.0  # node heartbeat (the node-lifecycle controller's grace period is 40 s)

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class Ipam:
    """Pod addresses 127.<a>.<b>.<c> of this cluster: never two live pods on one address."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # "127.<a>"
        self._used: dict[str, str] = {}
        self._cursor = 0
        self._lock = threading.Lock()

    def allocate(self, key: str) -> str:
        with self._lock:
            for ip, owner in self._used.items():
                if owner == key:
                    return ip
            for _ in range(250 * 254):
                self._cursor = self._cursor % (250 * 254) + 1
                b, c = divmod(self._cursor - 1, 254)
                ip = f"{self.prefix}.{b + 1}.{c + 1}"
                if ip not in self._used:
                    self._used[ip] = key
                    return ip
        raise RuntimeError("pod address range exhausted")

    def release(self, key: str) -> None:
        with self._lock:
            for ip in [ip for ip, owner in self._used.items() if owner == key]:
                del self._used[ip]


@dataclass
class ContainerRuntime:
    """Everything the kubelet tracks for one container of one pod."""

    spec: dict[str, Any]
    log_path: Path
    state: dict[str, Any] = field(default_factory=dict)
    last_state: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    ticks: int | None = None
    started_wall: str = ""
    started_mono: float = 0.0
    restart_count: int = 0
    ever_started: bool = False
    done: bool = False
    next_start: float = 0.0
    crash_count: int = 0
    pull_failures: int = 0
    first_pull_failure: float = 0.0
    container_id: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    readiness: ProbeTracker | None = None
    liveness: ProbeTracker | None = None
    startup: ProbeTracker | None = None
    kill_reason: str | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def image(self) -> str:
        return str(self.spec.get("image", ""))

    def view(self) -> ContainerView:
        running = self.proc is not None
        started = running and (self.startup is None or self.startup.result)
        ready = started and (self.readiness is None or self.readiness.result)
        return ContainerView(
            name=self.name,
            image=self.image,
            state=self.state or {"waiting": {"reason": "ContainerCreating"}},
            last_state=self.last_state,
            ready=bool(ready),
            started=bool(started),
            restart_count=self.restart_count,
            container_id=self.container_id,
            image_id=f"devcluster://{self.image}" if self.ever_started else None,
        )


def _sleep_until(event: threading.Event, seconds: float) -> None:
    event.wait(max(0.0, seconds))


class PodWorker(threading.Thread):
    """Runs one pod: its containers, probes, restarts, status, and its graceful deletion."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.key = f"{meta['namespace']}/{meta['name']}/{meta['uid']}"
        self.uid = meta["uid"]
        self.node = pod["spec"]["nodeName"]
        self.host_ip = kubelet.node_ips.get(self.node, "127.0.0.1")
        self.host_network = bool(pod["spec"].get("hostNetwork"))
        self.pod_ip = self.host_ip if self.host_network else kubelet.ipam.allocate(self.key)
        self.start_time = now_iso()
        self.dir = kubelet.layout_pods / meta["namespace"] / meta["name"]
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "uid").write_text(self.uid)
        self.containers = [
            ContainerRuntime(spec=c, log_path=self.dir / f"{c['name']}.log")
            for c in pod["spec"].get("containers", [])
        ]
        for c in self.containers:  # a new pod of the same name starts without the old one's logs
            for stale in (c.log_path, self.dir / f"{c.name}.previous.log"):
                stale.unlink(missing_ok=True)
        self._wake = threading.Event()
        self._gone = False
        self._stop_all = False
        self._written: dict[str, Any] | None = None
        self._http = httpx.Client(trust_env=False)

    # -- inputs from the kubelet's list loop --------------------------------------------------
    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self._wake.set()

    def gone(self) -> None:
        """The pod was removed from the API (force delete): stop at once."""
        self._gone = True
        self._wake.set()

    def shutdown(self) -> None:
        """The kubelet stops (cluster going down): stop containers, leave the pod object."""
        self._stop_all = True
        self._wake.set()

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while True:
                meta = self.pod["metadata"]
                if self._gone or self._stop_all:
                    self._stop_containers(grace=2.0 if self._gone else 5.0, reason="Killing")
                    break
                if meta.get("deletionTimestamp"):
                    self._terminate_and_delete()
                    break
                for c in self.containers:
                    try:
                        self._step(c)
                    except Exception:
                        log.exception("pod %s container %s: step failed", self.key, c.name)
                self._write_status()
                self._wake.wait(self.kubelet.config.tick_s)
                self._wake.clear()
        except Exception:
            log.exception("pod worker %s died", self.key)
        finally:
            self._http.close()
            self.kubelet.ipam.release(self.key)
            self.kubelet.worker_done(self)

    # -- containers ---------------------------------------------------------------------------
    def _event(self, reason: str, message: str, type_: str = "Normal", container: str | None = None) -> None:
        self.kubelet.event(self.pod, reason, message, type_, container)

    def _step(self, c: ContainerRuntime) -> None:
        now = time.monotonic()
        if c.proc is None:
            if c.done or now < c.next_start:
                return
            self._start(c, now)
            return
        rc = c.proc.poll()
        if rc is None:
            self._probe(c, now)
            return
        self._exited(c, rc, now)

    def _start(self, c: ContainerRuntime, now: float) -> None:
        entry = images.resolve(self.kubelet.image_entries(), c.image)
        if entry is None:
            if c.pull_failures == 0:
                c.first_pull_failure = now
                self._event("Pulling", f'Pulling image "{c.image}"', container=c.name)
                self._event(
                    "Failed",
                    f'Failed to pull image "{c.image}": rpc error: code = NotFound desc = failed to pull and '
                    f'unpack image "{c.image}": not found (devcluster has no local command for this image)',
                    "Warning",
                    c.name,
                )
            c.pull_failures += 1
            if now - c.first_pull_failure < 2.0:
                c.state = {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": f'rpc error: code = NotFound desc = failed to pull and unpack image "{c.image}": '
                        "not found",
                    }
                }
            else:
                c.state = {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{c.image}"',
                    }
                }
            return
        try:
            env = self._env(c, entry)
        except podenv.ContainerConfigError as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            return
        argv = podenv.command_line(entry.command, c.spec, env)
        if c.ever_started:
            c.restart_count += 1
            with contextlib.suppress(FileNotFoundError):
                c.log_path.replace(self.dir / f"{c.name}.previous.log")
        else:
            self._event("Pulled", f'Container image "{c.image}" already present on machine', container=c.name)
        c.ever_started = True
        c.env = env
        cwd = (
            Path(c.spec["workingDir"])
            if c.spec.get("workingDir") and Path(c.spec["workingDir"]).is_dir()
            else self.dir
        )
        try:
            c.proc = spawn(argv, c.log_path, env=env, cwd=cwd)
        except OSError as e:
            # What a runtime reports when the entrypoint cannot be executed.
            stamp = now_iso()
            self._exited_record(c, 128, "StartError", f"failed to start container: {e}", stamp, stamp, now)
            return
        c.ticks = proc_start_ticks(c.proc.pid)
        c.container_id = f"devcluster://{self.uid[:8]}-{c.name}-{c.restart_count}-{c.proc.pid}"
        c.started_wall = now_iso()
        c.started_mono = now
        c.state = {"running": {"startedAt": c.started_wall}}
        c.kill_reason = None
        c.readiness = ProbeTracker(c.spec["readinessProbe"], now) if c.spec.get("readinessProbe") else None
        c.liveness = ProbeTracker(c.spec["livenessProbe"], now) if c.spec.get("livenessProbe") else None
        c.startup = ProbeTracker(c.spec["startupProbe"], now) if c.spec.get("startupProbe") else None
        self.kubelet.registry.add(f"pod:{self.key}/{c.name}", c.proc.pid)
        self._event("Created", f"Created container {c.name}", container=c.name)
        self._event("Started", f"Started container {c.name}", container=c.name)

    def _env(self, c: ContainerRuntime, entry: images.ImageEntry) -> dict[str, str]:
        base = {
            k: v for k, v in os.environ.items() if k in PASSTHROUGH_ENV or k.startswith(PASSTHROUGH_PREFIXES)
        }
        base["HOSTNAME"] = self.pod["metadata"]["name"]
        env = podenv.container_env(
            self.pod,
            c.spec,
            image_env={**base, **entry.env},
            pod_ip=self.pod_ip,
            host_ip=self.host_ip,
            configmaps=self.kubelet.configmap,
            secrets=self.kubelet.secret,
        )
        # Every pod has its own address: a server that binds HOST binds the pod IP, like in a pod netns.
        env["HOST"] = self.pod_ip
        # The mounted service-account token of a real pod, as a kubeconfig (no in-cluster files here).
        kubeconfig = self._service_account_kubeconfig()
        if kubeconfig is not None:
            env.setdefault("KUBECONFIG", str(kubeconfig))
        return env

    def _service_account_kubeconfig(self) -> Path | None:
        """A kubeconfig with a pod-bound token of the pod's ServiceAccount (None when not automounted)."""
        spec, meta = self.pod["spec"], self.pod["metadata"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        path = self.dir / "serviceaccount" / "kubeconfig"
        if path.exists():
            return path
        sa = spec.get("serviceAccountName") or "default"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [],
                "expirationSeconds": 7 * 86400,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": self.uid},
            },
        }
        try:
            answer = self.kubelet.api.post(
                f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", request
            )
        except ApiError as e:
            if e.status == 404:
                # Like a kubelet that cannot mount the token: wait (the ServiceAccount controller
                # creates "default" a moment after its namespace).
                raise podenv.ContainerConfigError(f'serviceaccount "{sa}" not found') from e
            log.warning("token for %s/%s: %s", meta["namespace"], sa, e)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "token").write_text(answer["status"]["token"])
        (path.parent / "namespace").write_text(meta["namespace"])
        pki.write_kubeconfig(
            path,
            self.kubelet.server,
            answer["status"]["token"],
            self.kubelet.ca_file,
            namespace=meta["namespace"],
        )
        return path

    def _probe(self, c: ContainerRuntime, now: float) -> None:
        if c.startup is not None and not c.startup.result:
            if c.startup.due(now):
                ok, why = run_probe(c.startup.spec, c.spec, self.pod_ip, self._http, c.env)
                c.startup.record(ok, why)
                if not ok and c.startup.failed_out:
                    self._event("Unhealthy", f"Startup probe failed: {why}", "Warning", c.name)
                    self._kill(c, f"Container {c.name} failed startup probe, will be restarted")
            return
        for tracker, kind in ((c.readiness, "Readiness"), (c.liveness, "Liveness")):
            if tracker is None or not tracker.due(time.monotonic()):
                continue
            ok, why = run_probe(tracker.spec, c.spec, self.pod_ip, self._http, c.env)
            was = tracker.result
            tracker.record(ok, why)
            if not ok and (kind == "Liveness" or was or tracker.failures == 1):
                self._event("Unhealthy", f"{kind} probe failed: {why}", "Warning", c.name)
            if kind == "Liveness" and not ok and tracker.failed_out:
                self._kill(c, f"Container {c.name} failed liveness probe, will be restarted")
                return

    def _kill(self, c: ContainerRuntime, message: str) -> None:
        self._event("Killing", message, container=c.name)
        c.kill_reason = message
        if c.proc is not None:
            stop_pid(c.proc.pid, self._grace(), c.ticks, c.proc)

    def _exited(self, c: ContainerRuntime, rc: int, now: float) -> None:
        assert c.proc is not None
        # Anything the container left in its process group goes with it.
        signal_group(c.proc.pid, signal.SIGKILL)
        code = 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N, as runtimes report it
        reason = "Completed" if code == 0 else "Error"
        message = None
        if code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                message = tail_message(c.log_path.read_bytes()) or None
        self._exited_record(c, code, reason, message, c.started_wall, now_iso(), now)

    def _exited_record(
        self, c: ContainerRuntime, code: int, reason: str, message: str | None, started: str, finished: str,
        now: float,
    ) -> None:  # fmt: skip
        self.kubelet.registry.remove(f"pod:{self.key}/{c.name}")
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started,
            "finishedAt": finished,
        }
        if message:
            terminated["message"] = message
        if c.container_id:
            terminated["containerID"] = c.container_id
        c.proc = None
        c.readiness = c.liveness = c.startup = None
        policy = self.pod["spec"].get("restartPolicy", "Always")
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if not restart:
            c.state = {"terminated": terminated}
            c.done = True
            return
        cfg = self.kubelet.config
        if c.started_mono and now - c.started_mono > 600:
            c.crash_count = 0  # ran long enough: the back-off starts over, as the kubelet's does
        # The kubelet restarts at once after the first exit, then waits base, 2*base, ... up to max.
        delay = (
            0.0
            if c.crash_count == 0
            else min(cfg.backoff_base_s * 2 ** (c.crash_count - 1), cfg.backoff_max_s)
        )
        c.crash_count += 1
        c.next_start = now + delay
        c.last_state = {"terminated": terminated}
        if delay > 0:
            pod = self.pod["metadata"]
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={c.name} "
                    f"pod={pod['name']}_{pod['namespace']}({self.uid})",
                }
            }
            self._event("BackOff", "Back-off restarting failed container", "Warning", c.name)
        else:
            c.state = {"waiting": {"reason": "ContainerCreating" if code == 0 else "Error"}}

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30))
        return float(min(grace if grace is not None else 30, self.kubelet.config.max_grace_s))

    def _stop_containers(self, grace: float, reason: str) -> None:
        running = [c for c in self.containers if c.proc is not None]
        for c in running:
            self._event(reason, f"Stopping container {c.name}", container=c.name)
        threads = [
            threading.Thread(target=stop_pid, args=(c.proc.pid, grace, c.ticks, c.proc), daemon=True)
            for c in running
            if c.proc is not None
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in running:
            assert c.proc is not None
            rc = c.proc.returncode if c.proc.returncode is not None else -signal.SIGKILL
            code = 128 - rc if rc < 0 else rc
            self.kubelet.registry.remove(f"pod:{self.key}/{c.name}")
            c.state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": c.started_wall,
                    "finishedAt": now_iso(),
                    **({"containerID": c.container_id} if c.container_id else {}),
                }
            }
            c.proc = None
            c.done = True

    def _terminate_and_delete(self) -> None:
        self._stop_containers(self._grace(), "Killing")
        meta = self.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        with contextlib.suppress(ApiError):
            self._write_status()
        try:
            self.kubelet.api.delete(
                path, {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                       "preconditions": {"uid": self.uid}},
            )  # fmt: skip
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("deleting %s: %s", self.key, e)

    # -- status -------------------------------------------------------------------------------
    def _write_status(self) -> None:
        status = pod_status(
            self.pod,
            [c.view() for c in self.containers],
            pod_ip=self.pod_ip,
            host_ip=self.host_ip,
            start_time=self.start_time,
            now=now_iso(),
        )
        comparable = json.dumps(status, sort_keys=True)
        if self._written is not None and self._written.get("_json") == comparable:
            return
        meta = self.pod["metadata"]
        try:
            updated = self.kubelet.api.merge_patch(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                {"metadata": {"uid": self.uid}, "status": status},
            )
        except ApiError as e:
            if e.status == 404:
                self._gone = True
                return
            if e.status != 409:
                log.warning("status of %s: %s", self.key, e)
            return
        self.pod = updated
        self._written = {"_json": comparable}


class Kubelet:
    """Lists pods bound to its nodes and keeps one :class:`PodWorker` per pod."""

    def __init__(
        self,
        api: Api,
        node_ips: dict[str, str],
        state_dir: Path,
        images_file: Path,
        ipam: Ipam,
        registry: PidRegistry,
        config: KubeletConfig,
        server: str,
        ca_file: Path,
    ) -> None:
        self.api = api
        self.server = server
        self.ca_file = ca_file
        self.node_ips = node_ips
        self.layout_pods = state_dir / "pods"
        self.images_file = images_file
        self.ipam = ipam
        self.registry = registry
        self.config = config
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._images_mtime: float | None = None
        self._images: list[images.ImageEntry] = images.default_entries()

    def image_entries(self) -> list[images.ImageEntry]:
        """The image map, re-read when its file changed (tests add entries while the cluster runs)."""
        try:
            mtime = self.images_file.stat().st_mtime_ns
        except FileNotFoundError:
            return self._images
        if mtime != self._images_mtime:
            with contextlib.suppress(ValueError, OSError):
                self._images = images.load(self.images_file)
                self._images_mtime = mtime
        return self._images

    def configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        obj = self.api.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return None if obj is None else dict(obj.get("data") or {})

    def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        obj = self.api.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return None if obj is None else dict(obj.get("data") or {})

    def event(
        self, pod: dict[str, Any], reason: str, message: str, type_: str, container: str | None
    ) -> None:
        """Post a core/v1 Event about ``pod`` from component kubelet."""
        meta = pod["metadata"]
        stamp = now_iso()
        ref: dict[str, Any] = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                               "uid": meta["uid"], "apiVersion": "v1"}  # fmt: skip
        if container:
            ref["fieldPath"] = f"spec.containers{{{container}}}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{random.getrandbits(64):016x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet", "host": pod["spec"].get("nodeName", "")},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.api.post(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except (ApiError, httpx.HTTPError) as e:
            log.debug("event %s on %s: %s", reason, meta["name"], e)

    def worker_done(self, worker: PodWorker) -> None:
        with self._lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    def sync_once(self) -> None:
        """One pass: start workers for new pods on our nodes, feed updates, notice removed pods."""
        pods = self.api.get("/api/v1/pods").get("items", [])
        seen: set[str] = set()
        for pod in pods:
            if pod.get("spec", {}).get("nodeName") not in self.node_ips:
                continue
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            with self._lock:
                worker = self.workers.get(uid)
                if worker is None:
                    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and not pod[
                        "metadata"
                    ].get("deletionTimestamp"):
                        continue  # finished before this kubelet started: nothing to run
                    worker = PodWorker(self, pod)
                    self.workers[uid] = worker
                    worker.start()
                else:
                    worker.update(pod)
        with self._lock:
            for uid, worker in list(self.workers.items()):
                if uid not in seen:
                    worker.gone()

    def run(self, stop: threading.Event) -> None:
        """List pods until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.sync_once()
            except (ApiError, httpx.HTTPError) as e:
                log.warning("pod list failed: %s", e)
            _sleep_until(stop, self.config.list_interval_s)

    def shutdown(self) -> None:
        """Stop every pod's processes (the node goes away)."""
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.shutdown()
        for w in workers:
            w.join(timeout=self.config.max_grace_s + 5)
