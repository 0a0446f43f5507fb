"""One pod on the process kubelet: volumes, containers (entered by the launcher), probes, restarts,
status, and graceful deletion (preStop, then SIGTERM, then SIGKILL when the grace period is spent).

Each container is a process in its own process group and mount namespace, on the pod's own
loopback address (``HOST``, ``status.podIP``), as the user its securityContext and image say.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx

from devcluster import images, podenv, podroot, security
from devcluster.apiclient import ApiError
from devcluster.nodes import now_iso
from devcluster.podstatus import ContainerView, pod_status, tail_message
from devcluster.probes import ProbeTracker, run_hook, run_probe
from devcluster.procs import alive, proc_start_ticks, signal_group, spawn, stop_pid
from devcluster.volumes import Lookups, MountError, PodVolumes

if TYPE_CHECKING:
    from devcluster.kubelet import Kubelet

log = logging.getLogger("devcluster.kubelet")

# Host environment a container process inherits (a container sees none of the host's; a local
# process needs at least these to run, and OMP_NUM_THREADS keeps tiny models fast on small machines).
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
PASSTHROUGH_PREFIXES = ("HF_", "TRANSFORMERS_")
MIN_GRACE_S = 2.0  # the kubelet's minimumGracePeriodInSeconds after a preStop hook
TERMINATION_MESSAGE_MAX = 4096


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
    join_plan: Path | None = None  # how exec probes and hooks enter the running container
    termination_log: Path | None = None

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

    def in_container(self) -> Callable[[list[str]], list[str]] | None:
        """Wraps a command so that it runs inside this container (None while it does not run)."""
        plan = self.join_plan
        if self.proc is None or plan is None:
            return None
        return lambda command: podroot.launcher_argv(plan, *command)


def _read_sync(fd: int, timeout: float = 30.0) -> str:
    """What the launcher wrote before its exec ('' once the exec closed the pipe)."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data = os.read(fd, 4096)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


class PodWorker(threading.Thread):
    """Runs one pod: its volumes and containers, probes, restarts, status, and its graceful deletion."""

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
        self.kdir = (
            kubelet.layout_kubelet / self.uid
        )  # volumes and container roots, like /var/lib/kubelet/pods/<uid>
        self.containers = [
            ContainerRuntime(spec=c, log_path=self.dir / f"{c['name']}.log")
            for c in pod["spec"].get("containers", [])
        ]
        for c in self.containers:  # a new pod of the same name starts without the old one's logs
            for stale in (c.log_path, self.dir / f"{c.name}.previous.log"):
                stale.unlink(missing_ok=True)
        self.volume_specs = podroot.pod_volumes(pod)
        lookups = Lookups(
            configmap=lambda ns, name: kubelet.api.get_or_none(f"/api/v1/namespaces/{ns}/configmaps/{name}"),
            secret=lambda ns, name: kubelet.api.get_or_none(f"/api/v1/namespaces/{ns}/secrets/{name}"),
            pvc=lambda ns, name: kubelet.api.get_or_none(
                f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"
            ),
            pv=lambda name: kubelet.api.get_or_none(f"/api/v1/persistentvolumes/{name}"),
            token=self._token,
        )
        self.volumes = PodVolumes(
            self.kdir, pod, lookups, kubelet.attachments, kubelet.storage_dir, self.pod_ip, self.host_ip
        )
        self._volumes_ok = False
        self._next_mount = 0.0
        self._said: set[tuple[str, str]] = set()
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
                if self._mount():
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
            self.volumes.teardown()
            self.kubelet.ipam.release(self.key)
            self.kubelet.worker_done(self)

    def _event(self, reason: str, message: str, type_: str = "Normal", container: str | None = None,
               component: str = "kubelet") -> None:  # fmt: skip
        self.kubelet.event(self.pod, reason, message, type_, container, component)

    def _once(
        self, reason: str, message: str, container: str | None = None, component: str = "kubelet"
    ) -> None:
        """A Warning event, posted once per pod for the same reason and message."""
        if (reason, message) not in self._said:
            self._said.add((reason, message))
            self._event(reason, message, "Warning", container, component)

    # -- volumes ------------------------------------------------------------------------------
    def _mount(self) -> bool:
        """Set up the pod's volumes (retried each second until they are); True once all are."""
        now = time.monotonic()
        if self._volumes_ok:
            with contextlib.suppress(MountError, ApiError, httpx.HTTPError, OSError):
                self.volumes.refresh_tokens(self.volume_specs)
            return True
        if now < self._next_mount:
            return False
        self._next_mount = now + 1.0
        try:
            self.volumes.setup(self.volume_specs)
        except MountError as e:
            component = "attachdetach-controller" if e.reason == "FailedAttachVolume" else "kubelet"
            self._once(e.reason, str(e), component=component)
            return False
        except (ApiError, httpx.HTTPError, OSError) as e:
            log.warning("volumes of %s: %s", self.key, e)
            return False
        self._volumes_ok = True
        return True

    def _token(self, sa: str, ttl: int, audiences: list[str]) -> str:
        """A pod-bound token of ServiceAccount ``sa`` (TokenRequest API)."""
        meta = self.pod["metadata"]
        spec: dict[str, Any] = {"audiences": audiences, "expirationSeconds": ttl}
        # Bound to the pod when the pod names its ServiceAccount (the ServiceAccount admission
        # plugin, off here, would always have set it; the API refuses to bind a pod without it).
        if self.pod["spec"].get("serviceAccountName"):
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": self.uid}
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        try:
            answer = self.kubelet.api.post(
                f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", request
            )
        except ApiError as e:
            if e.status == 404:  # the ServiceAccount controller makes "default" a moment after its namespace
                raise LookupError(f'failed to fetch token: serviceaccounts "{sa}" not found') from e
            raise
        return str(answer["status"]["token"])

    # -- containers ---------------------------------------------------------------------------
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

    def _pull_failed(self, c: ContainerRuntime, now: float) -> None:
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
            message = (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{c.image}": not found'
            )
            c.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
        else:
            c.state = {
                "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{c.image}"'}
            }

    def _start(self, c: ContainerRuntime, now: float) -> None:
        entry = images.resolve(self.kubelet.image_entries(), c.image)
        if entry is None:
            self._pull_failed(c, now)
            return
        cdir = self.kdir / "containers" / c.name
        try:
            creds = security.credentials(self.pod, c.spec, entry)
            env = self._env(c, entry, creds)
            argv = podenv.command_line(entry.command, c.spec, env)
            layer = podroot.fresh_layer(cdir, entry)
            c.termination_log = podroot.fresh_termination_log(cdir)
            binds = podroot.binds(
                self.pod, c.spec, self.volumes.ready, layer, str(c.termination_log),
                expand=lambda s: podenv.expand(s, env),
            )  # fmt: skip
        except (podenv.ContainerConfigError, ValueError) as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            self._once("Failed", f"Error: {e}", c.name)
            return
        if c.ever_started:
            c.restart_count += 1
            with contextlib.suppress(FileNotFoundError):
                c.log_path.replace(self.dir / f"{c.name}.previous.log")
        else:
            self._event("Pulled", f'Container image "{c.image}" already present on machine', container=c.name)
        c.ever_started = True
        c.env = env
        cwd = c.spec.get("workingDir") or entry.workdir
        root = cdir / "root"
        root.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        try:
            plan = podroot.start_plan(root, creds, cwd, argv, binds, write_fd)
            (cdir / "plan.json").write_text(json.dumps(plan, indent=1))
            c.proc = spawn(
                podroot.launcher_argv(cdir / "plan.json"), c.log_path, env=env, pass_fds=(write_fd,)
            )
        except OSError as e:
            c.proc = None
            stamp = now_iso()
            self._exited_record(c, 128, "StartError", f"failed to start container: {e}", stamp, stamp, now)
            return
        finally:
            os.close(write_fd)
        try:
            error = _read_sync(read_fd)
        finally:
            os.close(read_fd)
        if error:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=10)
            c.proc = None
            stamp = now_iso()
            self._exited_record(
                c, 128, "StartError", f"failed to start container: {error}", stamp, stamp, now
            )
            self._event("Failed", f"Error: failed to start container: {error}", "Warning", c.name)
            return
        c.join_plan = cdir / "join.json"
        c.join_plan.write_text(json.dumps(podroot.join_plan(c.proc.pid, creds, cwd)))
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

    def _env(
        self, c: ContainerRuntime, entry: images.ImageEntry, creds: security.Credentials
    ) -> dict[str, str]:
        base = {
            k: v for k, v in os.environ.items() if k in PASSTHROUGH_ENV or k.startswith(PASSTHROUGH_PREFIXES)
        }
        base["HOSTNAME"] = self.pod["metadata"]["name"]
        # The kubernetes Service's variables, as every pod gets them (here: the apiserver itself),
        # so in-cluster clients use the mounted service-account token.
        api = urlparse(self.kubelet.server)
        base |= {
            "KUBERNETES_SERVICE_HOST": api.hostname or "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(api.port or 443),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(api.port or 443),
        }
        env = podenv.container_env(
            self.pod,
            c.spec,
            image_env={**base, **entry.env},
            pod_ip=self.pod_ip,
            host_ip=self.host_ip,
            configmaps=self.kubelet.configmap,
            secrets=self.kubelet.secret,
        )
        env.setdefault("HOME", creds.home)  # a runtime sets HOME from the image's /etc/passwd
        # Every pod has its own address: a server that binds HOST binds the pod IP, like in a pod netns.
        env["HOST"] = self.pod_ip
        return env

    def _probe(self, c: ContainerRuntime, now: float) -> None:
        wrap = c.in_container()
        if c.startup is not None and not c.startup.result:
            if c.startup.due(now):
                ok, why = run_probe(c.startup.spec, c.spec, self.pod_ip, self._http, c.env, wrap)
                c.startup.record(ok, why)
                if not ok and c.startup.failed_out:
                    self._event("Unhealthy", f"Startup probe failed: {why}", "Warning", c.name)
                    self._kill(c, f"Container {c.name} failed startup probe, will be restarted")
            return
        for tracker, kind in ((c.readiness, "Readiness"), (c.liveness, "Liveness")):
            if tracker is None or not tracker.due(time.monotonic()):
                continue
            ok, why = run_probe(tracker.spec, c.spec, self.pod_ip, self._http, c.env, wrap)
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
        grace = self.pod["spec"].get("terminationGracePeriodSeconds")
        self._kill_container(c, float(30 if grace is None else grace))

    def _kill_container(self, c: ContainerRuntime, grace: float) -> None:
        """The kubelet's killContainer: preStop (within the grace period), then SIGTERM, then SIGKILL
        when what is left of the grace period (at least 2 s) has run out."""
        proc = c.proc
        if proc is None:
            return
        started = time.monotonic()
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if hook and grace > 0 and proc.poll() is None:
            ok, why = run_hook(
                hook, c.spec, self.pod_ip, self._http, c.env, c.in_container(), grace, lambda: self._gone
            )
            if not ok:
                meta = self.pod["metadata"]
                self._event(
                    "FailedPreStopHook",
                    f'PreStopHook failed: {why} (container "{c.name}" in pod "{meta["name"]}_{meta["namespace"]}")',
                    "Warning",
                    c.name,
                )
        left = max(grace - (time.monotonic() - started), MIN_GRACE_S)
        signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + left
        while time.monotonic() < deadline and not self._gone:
            if proc.poll() is not None or not alive(proc.pid, c.ticks):
                break
            time.sleep(0.05)
        signal_group(proc.pid, signal.SIGKILL)  # the group may hold children even when the leader exited
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def _termination_message(self, c: ContainerRuntime, code: int) -> str | None:
        """The termination-message file's content, else (FallbackToLogsOnError, failed exit) the log's tail."""
        with contextlib.suppress(OSError):
            if c.termination_log is not None:
                data = c.termination_log.read_bytes()[:TERMINATION_MESSAGE_MAX]
                if data:
                    return data.decode(errors="replace")
        if code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                return tail_message(c.log_path.read_bytes()) or None
        return None

    def _exited(self, c: ContainerRuntime, rc: int, now: float) -> None:
        assert c.proc is not None
        # Anything the container left in its process group goes with it.
        signal_group(c.proc.pid, signal.SIGKILL)
        code = 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N, as runtimes report it
        reason = "Completed" if code == 0 else "Error"
        self._exited_record(
            c, code, reason, self._termination_message(c, code), c.started_wall, now_iso(), now
        )

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

    def _deletion_grace(self) -> float:
        """deletionGracePeriodSeconds, else terminationGracePeriodSeconds (30 by default); never capped."""
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
        return float(30 if grace is None else grace)

    def _stop_containers(self, grace: float, reason: str, hooks: bool = False) -> None:
        """Stop every running container at once (with preStop hooks when ``hooks``)."""
        running = [c for c in self.containers if c.proc is not None]
        for c in running:
            self._event(reason, f"Stopping container {c.name}", container=c.name)

        def stop(c: ContainerRuntime) -> None:
            if c.proc is None:
                return
            if hooks:
                self._kill_container(c, grace)
            else:
                stop_pid(c.proc.pid, grace, c.ticks, c.proc)

        threads = [threading.Thread(target=stop, args=(c,), daemon=True) for c in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in running:
            assert c.proc is not None
            rc = c.proc.returncode if c.proc.returncode is not None else -signal.SIGKILL
            code = 128 - rc if rc < 0 else rc
            self.kubelet.registry.remove(f"pod:{self.key}/{c.name}")
            message = self._termination_message(c, code)
            c.state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": c.started_wall,
                    "finishedAt": now_iso(),
                    **({"message": message} if message else {}),
                    **({"containerID": c.container_id} if c.container_id else {}),
                }
            }
            c.proc = None
            c.done = True

    def _terminate_and_delete(self) -> None:
        self._stop_containers(self._deletion_grace(), "Killing", hooks=True)
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
