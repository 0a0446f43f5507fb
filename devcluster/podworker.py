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
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from devcluster import container, images, node_env, podenv, podroot, security
from devcluster.apiclient import ApiError
from devcluster.apiproxy import service_address
from devcluster.container import ContainerRuntime
from devcluster.nodes import now_iso
from devcluster.podstatus import pod_status
from devcluster.probes import ProbeTracker, run_probe
from devcluster.procs import proc_start_ticks, signal_group, stop_pid
from devcluster.volumes import MountError, PodVolumes

if TYPE_CHECKING:
    from devcluster.kubelet import Kubelet

log = logging.getLogger("devcluster.kubelet")


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
        # initContainers run one at a time, each to success, before any container starts
        self.init_containers = [
            ContainerRuntime(spec=c, log_path=self.dir / f"{c['name']}.log")
            for c in pod["spec"].get("initContainers", [])
        ]
        # a new pod of the same name starts without the old one's logs
        for c in [*self.init_containers, *self.containers]:
            for stale in (c.log_path, self.dir / f"{c.name}.previous.log"):
                stale.unlink(missing_ok=True)
        self.volume_specs = podroot.pod_volumes(pod)
        lookups = kubelet.lookups(pod)
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
                if self._mount() and self._inits_done():
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

    # -- containers ---------------------------------------------------------------------------
    def _inits_done(self) -> bool:
        """Step the first init container that has not succeeded; True once all have."""
        for c in self.init_containers:
            if c.done and c.state.get("terminated", {}).get("exitCode") == 0:
                continue
            if not c.done:  # done with a failure (restartPolicy Never): the pod stays Failed
                try:
                    self._step(c, init=True)
                except Exception:
                    log.exception("pod %s init container %s: step failed", self.key, c.name)
            return False
        return True

    def _step(self, c: ContainerRuntime, init: bool = False) -> None:
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
        self._exited(c, rc, now, init)

    def _start(self, c: ContainerRuntime, now: float) -> None:
        entry = images.resolve(self.kubelet.image_entries(), c.image)
        if entry is None:
            container.pull_failed(c, now, self._event)
            return
        cdir = self.kdir / "containers" / c.name
        try:
            creds = security.credentials(self.pod, c.spec, entry)
            env = self._env(c, entry, creds)
            argv = podenv.command_line(entry.command, c.spec, env)
            hosts = podroot.hosts_file(
                Path("/etc/hosts").read_text(), self.pod_ip, self.pod["metadata"]["name"],
                service_address(self.kubelet.ipam.prefix),
            )  # fmt: skip
            layer = podroot.fresh_layer(cdir, entry, hosts)
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
        error = container.enter(c, cdir, creds, c.spec.get("workingDir") or entry.workdir, argv, binds, env)
        if error or c.proc is None:
            stamp = now_iso()
            message = f"failed to start container: {error}"
            self._exited_record(c, 128, "StartError", message, stamp, stamp, now)
            self._event("Failed", f"Error: {message}", "Warning", c.name)
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

    def _env(
        self, c: ContainerRuntime, entry: images.ImageEntry, creds: security.Credentials
    ) -> dict[str, str]:
        base = podenv.runtime_env(os.environ, self.pod["metadata"]["name"], self.kubelet.server)
        base |= node_env.read(self.kubelet.state_dir, self.pod["spec"].get("nodeName"))
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
        meta = self.pod["metadata"]

        def hook_failed(why: str) -> None:
            where = f'container "{c.name}" in pod "{meta["name"]}_{meta["namespace"]}"'
            self._event("FailedPreStopHook", f"PreStopHook failed: {why} ({where})", "Warning", c.name)

        container.kill(c, grace, self.pod_ip, self._http, lambda: self._gone, hook_failed)

    def _exited(self, c: ContainerRuntime, rc: int, now: float, init: bool = False) -> None:
        assert c.proc is not None
        # Anything the container left in its process group goes with it.
        signal_group(c.proc.pid, signal.SIGKILL)
        code = 128 - rc if rc < 0 else rc  # killed by signal N -> 128+N, as runtimes report it
        reason = "Completed" if code == 0 else "Error"
        self._exited_record(
            c, code, reason, c.termination_message(code), c.started_wall, now_iso(), now, init
        )

    def _exited_record(
        self, c: ContainerRuntime, code: int, reason: str, message: str | None, started: str, finished: str,
        now: float, init: bool = False,
    ) -> None:  # fmt: skip
        """Record an exit; restart per restartPolicy (an init container that succeeded is done)."""
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
        restart = (policy == "Always" and not (init and code == 0)) or (policy == "OnFailure" and code != 0)
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
        running = [c for c in [*self.init_containers, *self.containers] if c.proc is not None]
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
            message = c.termination_message(code)
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
            init=[c.view() for c in self.init_containers],
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
