"""The detached supervisor of one cluster: control plane, node agent, process kubelet (and Prometheus).

``python -m devcluster.supervisor STATE_DIR`` reads ``config.json`` there, starts etcd, the
apiserver, the controller manager and the scheduler on free loopback ports, registers the nodes,
runs the node heartbeats and the kubelet, and writes ``state.json`` (phase ``ready`` once usable).
SIGTERM (or the death of ``owner_pid``) stops pods and control plane, in that order.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from devcluster import controlplane as cp
from devcluster import helm, launch, pki, prometheus, restarts
from devcluster.apiclient import Api
from devcluster.apiproxy import ApiProxy, service_address
from devcluster.kubelet import Ipam, Kubelet, KubeletConfig
from devcluster.kubeletapi import KubeletServer
from devcluster.nodeagent import LEASE_RENEW_S, PAUSED_NODES, NodeAgent
from devcluster.nodes import NodeSpec
from devcluster.procs import PidRegistry, spawn, stop_pid
from devcluster.settings import bin_dir
from devcluster.storage import Storage

log = logging.getLogger("devcluster.supervisor")

RANGE_LOCKS = Path("/tmp/devcluster-pod-ranges")


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def claim_pod_prefix(preferred: int | None) -> tuple[str, TextIO]:
    """Claim a 127.<a> range no other running cluster on this machine uses (an flock held for life)."""
    RANGE_LOCKS.mkdir(parents=True, exist_ok=True)
    candidates = list(range(100, 250))
    random.shuffle(candidates)
    if preferred is not None:
        candidates.insert(0, preferred)
    for a in candidates:
        f = (RANGE_LOCKS / f"127.{a}.lock").open("w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        f.write(str(os.getpid()))
        f.flush()
        return f"127.{a}", f
    raise RuntimeError("no free 127.x pod range")


class Supervisor:
    def __init__(self, state_dir: Path) -> None:
        self.layout = cp.Layout(state_dir)
        self.config = json.loads((state_dir / "config.json").read_text())
        self.registry = PidRegistry(self.layout.pids)
        self.stop = threading.Event()
        self.procs: dict[str, subprocess.Popen] = {}
        self.argvs: dict[str, list[str]] = {}  # each process's command line (restarts reuse it)
        self.health: dict[str, Any] = {}  # name -> check() of a control-plane process
        self.state: dict[str, Any] = {"phase": "starting", "supervisor_pid": os.getpid()}
        self.kubelet: Kubelet | None = None
        self.kubelet_api: KubeletServer | None = None
        self.api_proxy: ApiProxy | None = None
        self.registry.add("supervisor", os.getpid())
        self.threads: list[threading.Thread] = []

    def _set(self, **kv: Any) -> None:
        self.state.update(kv)
        write_json(self.layout.state_file, self.state)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        proc = spawn(argv, self.layout.logs / f"{name}.log")
        self.procs[name] = proc
        self.argvs[name] = argv
        self.registry.add(name, proc.pid)
        log.info("started %s (pid %d)", name, proc.pid)
        return proc

    def _wait(self, what: str, check: Any, timeout: float, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stop.is_set():
                raise RuntimeError("stopped while starting")
            if proc is not None and proc.poll() is not None:
                name = next((n for n, p in self.procs.items() if p is proc), what)
                tail = _tail(self.layout.logs / f"{name}.log")
                raise RuntimeError(
                    f"{what} exited with code {proc.returncode}; {self.layout.logs}/{name}.log:\n{tail}"
                )
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s; see {self.layout.logs}")

    def start(self) -> None:
        t0 = time.monotonic()
        layout = self.layout
        layout.logs.mkdir(parents=True, exist_ok=True)
        prefix, self._range_lock = claim_pod_prefix(self.config.get("pod_prefix"))
        pki.make_pki(layout.pki)
        token = pki.make_token_file(layout.token_file)
        ports = cp.Ports.pick()
        server = f"https://127.0.0.1:{ports.apiserver}"
        pki.write_kubeconfig(layout.kubeconfig, server, token, layout.pki / "ca.crt")
        nodes = [NodeSpec.from_dict(d) for d in self.config["nodes"]]
        # Nodes' InternalIPs are 127.<a>.0.<i>; pods take 127.<a>.<1..250>.<1..254>.
        node_ips = {n.name: f"{prefix}.0.{i + 1}" for i, n in enumerate(nodes)}
        self._set(server=server, ports=ports.__dict__, pod_prefix=prefix, node_ips=node_ips)

        binaries = Path(self.config.get("bin_dir") or bin_dir())
        etcd_bin = self.config.get("etcd") or "/usr/bin/etcd"
        etcd = self._spawn("etcd", cp.etcd_argv(etcd_bin, layout, ports))
        plain = httpx.Client(trust_env=False, timeout=2)

        def etcd_ok() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return plain.get(f"http://127.0.0.1:{ports.etcd_client}/health").status_code == 200
            return False

        self._wait("etcd", etcd_ok, 30, etcd)
        self.health["etcd"] = etcd_ok
        api_flags, kcm_flags = cp.node_loss_flags(self.config.get("node_loss"))
        apiserver = self._spawn("kube-apiserver", cp.apiserver_argv(binaries, layout, ports, api_flags))
        api = Api(server, token, str(layout.pki / "ca.crt"))
        self._wait("kube-apiserver /readyz", lambda: api.ok("/readyz"), 60, apiserver)
        self.health["kube-apiserver"] = lambda: api.ok("/readyz")
        log.info("apiserver ready after %.1f s", time.monotonic() - t0)
        kcm = self._spawn(
            "kube-controller-manager", cp.controller_manager_argv(binaries, layout, ports, kcm_flags)
        )
        sched = self._spawn("kube-scheduler", cp.scheduler_argv(binaries, layout, ports))

        # kubectl logs: the apiserver asks <node IP>:10250 (TLS not verified without --kubelet-certificate-authority).
        self.kubelet_api = KubeletServer(
            layout.pods, node_ips, layout.pki / "apiserver.crt", layout.pki / "apiserver.key"
        )
        self.kubelet_api.start()
        # The kubernetes Service (pods' /etc/hosts name it kubernetes.default.svc): port 443 of the pod range.
        self.api_proxy = ApiProxy((service_address(prefix), 443), ("127.0.0.1", ports.apiserver))
        self.api_proxy.start()
        kcfg = KubeletConfig(**self.config.get("kubelet", {}))
        renew = kcfg.lease_renew_s if self.config.get("node_loss") else LEASE_RENEW_S
        agent = NodeAgent(api, nodes, node_ips, renew, paused_file=layout.state / PAUSED_NODES)
        agent.register()
        self.kubelet = Kubelet(
            api,
            node_ips,
            layout.state,
            layout.images,
            Ipam(prefix),
            self.registry,
            kcfg,
            server,
            layout.pki / "ca.crt",
        )
        storage = Storage(api, layout.storage)
        storage.ensure_class()
        for target in (agent.run, self.kubelet.run, storage.run):
            t = threading.Thread(target=target, args=(self.stop,), daemon=True)
            t.start()
            self.threads.append(t)

        insecure = httpx.Client(trust_env=False, timeout=2, verify=False)

        def healthz(port: int) -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return insecure.get(f"https://127.0.0.1:{port}/healthz").status_code == 200
            return False

        self._wait("kube-scheduler /healthz", lambda: healthz(ports.scheduler), 30, sched)
        self._wait("kube-controller-manager /healthz", lambda: healthz(ports.controller_manager), 30, kcm)
        self.health["kube-scheduler"] = lambda: healthz(ports.scheduler)
        self.health["kube-controller-manager"] = lambda: healthz(ports.controller_manager)

        def nodes_ready() -> bool:
            items = api.get("/api/v1/nodes").get("items", [])
            ready = {
                n["metadata"]["name"]
                for n in items
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            }
            return all(n.name in ready for n in nodes)

        self._wait("nodes Ready", nodes_ready, 30)
        if self.config.get("prometheus"):  # `up --prometheus`: devcluster/prometheus.py
            cfg = prometheus.PrometheusConfig.from_dict(self.config["prometheus"])
            ca = layout.pki / "ca.crt"
            url = prometheus.start(
                cfg, layout.state, api, server, ca, helm.default_path(), self._spawn, self._wait, self.stop
            )
            self._set(prometheus=url)
        self._set(phase="ready", started_in_s=round(time.monotonic() - t0, 2))
        log.info("cluster ready in %.1f s: %s", time.monotonic() - t0, server)

    def watch(self) -> None:
        """Until stopped: notice a dead control-plane process or a dead owner."""
        owner = self.config.get("owner_pid")
        while not self.stop.wait(1.0):
            if owner and not Path(f"/proc/{owner}").exists():
                log.warning("owner process %s is gone: stopping the cluster", owner)
                break
            for name, down_s in restarts.pending(self.layout.state):
                self.restart(name, down_s)
            for name, proc in self.procs.items():
                if proc.poll() is not None and self.state.get("phase") == "ready":
                    log.error("%s exited with code %s", name, proc.returncode)
                    self._set(phase="degraded", error=f"{name} exited with code {proc.returncode}")

    def restart(self, name: str, down_s: float) -> None:
        """Stop one control-plane process, keep it down ``down_s`` s, start it again with the same
        command line and wait for its health check; the answer goes to ``restart-<name>.done.json``."""
        result: dict[str, Any] = {"name": name, "down_s": down_s}
        try:
            proc = self.procs[name]
            stop_pid(proc.pid, 5.0, None, proc)
            result["stopped_at"] = time.time()
            log.warning("restart: %s stopped (pid %d), down for %.1f s", name, proc.pid, down_s)
            time.sleep(down_s)
            new = self._spawn(name, self.argvs[name])
            result["started_at"] = time.time()
            self._wait(f"{name} after its restart", self.health[name], 60, new)
            result["healthy_at"] = time.time()
            log.warning("restart: %s healthy again (pid %d)", name, new.pid)
        except Exception as e:  # the caller reads the error; the cluster turns degraded
            log.exception("restart of %s failed", name)
            result["error"] = str(e)
        restarts.report(self.layout.state, name, result)

    def shutdown(self) -> None:
        """Pods first (graceful), then scheduler, controller manager, apiserver, etcd."""
        self._set(phase="stopping")
        self.stop.set()
        if self.kubelet is not None:
            self.kubelet.shutdown()
        if self.kubelet_api is not None:
            self.kubelet_api.stop()
        if self.api_proxy is not None:
            self.api_proxy.stop()
        for name in (prometheus.PROCESS, *cp.PROCESSES):  # Prometheus first: a client of the apiserver
            proc = self.procs.get(name)
            if proc is not None:
                stop_pid(proc.pid, 5.0, None, proc)
                self.registry.remove(name)
        # Anything registered that is still running (a pod process that escaped its worker).
        self.registry.kill_all(2.0)
        self._set(phase="stopped")


def main(argv: list[str]) -> int:
    state_dir = Path(argv[0]).resolve()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The kubelet's mounts (memory-backed emptyDirs) live in a mount namespace of our own: the host
    # never sees them and they go when the supervisor does. Pods' namespaces are made from it.
    try:
        launch.private_mount_namespace()
    except OSError as e:
        log.error("the process kubelet needs root (mount namespaces, bind mounts, setuid): %s", e)
        write_json(cp.Layout(state_dir).state_file, {"phase": "failed", "error": f"needs root: {e}"})
        return 1
    sup = Supervisor(state_dir)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        sup.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        sup.start()
        sup.watch()
    except Exception as e:
        log.exception("supervisor failed")
        sup._set(phase="failed", error=str(e))
        code = 1
    finally:
        phase = sup.state.get("phase")
        sup.shutdown()
        if phase == "failed":
            sup._set(phase="failed")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
