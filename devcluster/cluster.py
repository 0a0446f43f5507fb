"""The Python API: :class:`Cluster` starts, attaches to and stops one devcluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from devcluster import build, images, node_env, restarts
from devcluster.controlplane import PROCESSES, Layout
from devcluster.kubelet import KubeletConfig
from devcluster.nodes import DEFAULT_NODES, NodeSpec
from devcluster.procs import PidRegistry, alive, signal_group
from devcluster.prometheus import PROCESS as PROMETHEUS
from devcluster.prometheus import PrometheusConfig
from devcluster.settings import bin_dir

# Fast crash-loop back-off for test clusters (a kubelet uses 10 s, doubling up to 5 min).
TEST_KUBELET = KubeletConfig(backoff_base_s=1.0, backoff_max_s=8.0, lease_renew_s=3.0)


class ClusterError(RuntimeError):
    """The cluster did not start (the message names the log to read)."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


@dataclass
class Cluster:
    """A running devcluster: a real apiserver + controller manager + scheduler, and fake GPU nodes.

    Start one with :meth:`start` (also a context manager), or :meth:`attach` to one started by
    ``python -m devcluster up``.
    """

    state_dir: Path
    server: str
    token: str
    kubeconfig: Path
    owns: bool = True  # stop() on context exit
    info: dict[str, Any] = field(default_factory=dict)

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        state_dir: Path | str | None = None,
        nodes: tuple[NodeSpec, ...] | list[NodeSpec] = DEFAULT_NODES,
        *,
        kubelet: KubeletConfig | None = None,
        owner_pid: int | None = None,
        pod_prefix: int | None = None,
        timeout: float = 90.0,
        prometheus: PrometheusConfig | None = None,
        node_loss: dict[str, float] | None = None,
    ) -> Cluster:
        """Start a cluster in ``state_dir`` (a fresh temp folder when None) and wait until it is ready.

        ``owner_pid``: the cluster stops by itself when that process dies (test sessions).
        ``pod_prefix``: preferred ``a`` of the 127.a.x.y pod range (another free one is taken if busy).
        ``prometheus``: also run Prometheus, scraping what the chart's monitors select
        (:mod:`devcluster.prometheus`); its URL is :attr:`prometheus_url`.
        ``node_loss``: shortened node-loss timeouts for fault experiments, ``{"grace_s": 20,
        "toleration_s": 5}`` (node-monitor grace period; pods' default not-ready/unreachable
        toleration), with node heartbeats every ``kubelet.lease_renew_s`` (see :meth:`pause_heartbeats`).
        """
        if not build.is_built():
            raise ClusterError(
                f"control-plane binaries missing in {bin_dir()}: run `python -m devcluster build`"
            )
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="devcluster-"))
        args = (
            Path(state_dir),
            tuple(nodes),
            kubelet or KubeletConfig(),
            owner_pid,
            pod_prefix,
            timeout,
            prometheus,
            node_loss,
        )
        try:
            return cls._start_once(*args)
        except ClusterError as e:
            # Free ports are picked before the components bind them: another process may have
            # taken one in between. One more try, with fresh ports.
            if "address already in use" not in str(e):
                raise
            return cls._start_once(*args)

    @classmethod
    def _start_once(
        cls,
        state_dir: Path,
        nodes: tuple[NodeSpec, ...],
        kubelet: KubeletConfig,
        owner_pid: int | None,
        pod_prefix: int | None,
        timeout: float,
        prom: PrometheusConfig | None = None,
        node_loss: dict[str, float] | None = None,
    ) -> Cluster:
        layout = Layout(Path(state_dir).resolve())
        existing = cls._read_state(layout)
        if existing.get("phase") in ("starting", "ready", "degraded") and alive(
            existing.get("supervisor_pid", 0)
        ):
            raise ClusterError(
                f"a cluster already runs in {layout.state} (run `python -m devcluster down` first)"
            )
        layout.state.mkdir(parents=True, exist_ok=True)
        # Whatever an earlier run left behind (its supervisor was killed) goes first.
        PidRegistry(layout.pids).kill_all(2.0)
        # Fresh state each start: no etcd data, pods or pids from an earlier run.
        for stale in (layout.etcd_data, layout.pods, layout.kubelet, layout.storage, layout.logs):
            shutil.rmtree(stale, ignore_errors=True)
        for f in (layout.state_file, layout.pids, layout.kubeconfig):
            f.unlink(missing_ok=True)
        layout.logs.mkdir(parents=True, exist_ok=True)
        config = {
            "nodes": [n.to_dict() for n in nodes],
            "kubelet": kubelet.to_dict(),
            "owner_pid": owner_pid,
            "pod_prefix": pod_prefix,
            "bin_dir": str(bin_dir()),
            "etcd": shutil.which("etcd") or "/usr/bin/etcd",
            "prometheus": prom.to_dict() if prom else None,
            "node_loss": node_loss,
        }
        (layout.state / "config.json").write_text(json.dumps(config, indent=1))
        if not layout.images.exists():
            images.save(layout.images, images.default_entries())
        with (layout.logs / "supervisor.log").open("ab") as out:
            sup = subprocess.Popen(
                [sys.executable, "-m", "devcluster.supervisor", str(layout.state)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: `up` returns while it runs on
                cwd=str(Path(__file__).resolve().parent.parent),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        PidRegistry(layout.pids).add("supervisor", sup.pid)
        deadline = time.monotonic() + timeout
        while True:
            state = cls._read_state(layout)
            phase = state.get("phase")
            if phase == "ready":
                break
            if phase in ("failed", "stopping", "stopped") or sup.poll() is not None:
                sup.wait(timeout=30) if sup.poll() is None else None
                raise ClusterError(
                    f"devcluster failed to start: {state.get('error', 'supervisor exited')}\n"
                    f"--- {layout.logs / 'supervisor.log'}\n{_tail(layout.logs / 'supervisor.log')}"
                )
            if time.monotonic() > deadline:
                cls._stop_dir(layout)
                raise ClusterError(f"devcluster not ready after {timeout:.0f} s; logs in {layout.logs}")
            time.sleep(0.1)
        return cls.attach(layout.state, owns=True)

    @classmethod
    def attach(cls, state_dir: Path | str, owns: bool = False) -> Cluster:
        """A handle on the cluster already running in ``state_dir``."""
        layout = Layout(Path(state_dir).resolve())
        state = cls._read_state(layout)
        if state.get("phase") not in ("ready", "degraded"):
            raise ClusterError(f"no running devcluster in {layout.state} (phase: {state.get('phase')})")
        kc = yaml.safe_load(layout.kubeconfig.read_text())
        return cls(
            state_dir=layout.state,
            server=state["server"],
            token=kc["users"][0]["user"]["token"],
            kubeconfig=layout.kubeconfig,
            owns=owns,
            info=state,
        )

    @staticmethod
    def _read_state(layout: Layout) -> dict[str, Any]:
        try:
            return dict(json.loads(layout.state_file.read_text()))
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _stop_dir(layout: Layout, timeout: float = 30.0) -> list[str]:
        """Stop the supervisor (it stops pods and control plane), then kill whatever is left."""
        registry = PidRegistry(layout.pids)
        # Processes registered on top of the cluster (the demo's operator) first, while the API
        # server they talk to still answers: their logs end with their own shutdown, not retries.
        registry.kill_all(10.0, only=_is_extra)
        entries = registry.items()
        sup = entries.get("supervisor")
        if sup and alive(sup[0], sup[1] or None):
            signal_group(sup[0], 15)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and alive(sup[0], sup[1] or None):
                time.sleep(0.1)
        leftovers = registry.kill_all(5.0)
        return [name for name in leftovers if name != "supervisor"]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop everything of this cluster: pods, scheduler, controller manager, apiserver, etcd."""
        self._stop_dir(Layout(self.state_dir), timeout)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.owns:
            self.stop()

    # -- using it -------------------------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        return Layout(self.state_dir)

    @property
    def pod_prefix(self) -> str:
        """``127.<a>``: every pod address of this cluster starts with it."""
        return str(self.info["pod_prefix"])

    @property
    def prometheus_url(self) -> str | None:
        """``http://127.0.0.1:<port>`` of the cluster's Prometheus (None when started without)."""
        url = self.info.get("prometheus")
        return str(url) if url else None

    def pids(self) -> dict[str, int]:
        """Running processes of this cluster by name (control plane, supervisor, pod containers)."""
        return {k: v[0] for k, v in PidRegistry(self.layout.pids).alive_items().items()}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig <this cluster> ARGS``; raises on failure when ``check``."""
        proc = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this cluster (admin token, CA verified)."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        cfg.proxy = None
        return client.ApiClient(cfg)

    def add_image(
        self,
        repository_suffix_or_image: str,
        command: list[str],
        env: dict[str, str] | None = None,
        uid: int | None = None,
    ) -> None:
        """Teach the process kubelet to run an image as ``command`` (with ``env`` as the image's env).

        ``repository_suffix_or_image``: a repository suffix (``omega-vlm-server`` matches any
        registry and tag) or a full image with tag/digest (matches only that image). The image's
        user is ``uid`` (gid the same); by default root, or for an image the built-in table knows
        (any omega-vlm-server) its user, directories and env, as that image is built.
        """
        entry = images.stand_in(repository_suffix_or_image, tuple(command), dict(env or {}), uid)
        images.add(self.layout.images, entry)

    def restart_component(self, name: str, down_s: float = 0.0, timeout: float = 90.0) -> dict[str, Any]:
        """Stop a control-plane process (``etcd``, ``kube-apiserver``, ``kube-controller-manager``,
        ``kube-scheduler``), keep it down ``down_s`` seconds and start it again (same ports, same etcd
        data); returns once it is healthy, with the times (:mod:`devcluster.restarts`)."""
        restarts.request(self.state_dir, name, down_s)
        return restarts.wait_done(self.state_dir, name, timeout + down_s)

    def set_node_env(self, node: str, env: dict[str, str] | None) -> None:
        """Give every container ``node`` starts from now on these variables (None clears them): how a
        test makes one node differ from the others (``devcluster.node_env``)."""
        node_env.write(self.state_dir, node, env)

    def pause_heartbeats(self, node: str, paused: bool = True) -> None:
        """Stop (or, ``paused=False``, resume) a node's Lease renewals and status updates: the node
        looks lost to the node-lifecycle controller; its pod processes keep running."""
        from devcluster.nodeagent import PAUSED_NODES

        path = self.state_dir / PAUSED_NODES
        try:
            names = set(json.loads(path.read_text()))
        except (OSError, ValueError):
            names = set()
        names = names | {node} if paused else names - {node}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(names)))
        tmp.replace(path)

    def pod_log(self, namespace: str, pod: str, container: str | None = None, previous: bool = False) -> str:
        """The output of a pod's container (the only one when ``container`` is None)."""
        d = self.layout.pods / namespace / pod
        if container is None:
            logs = sorted(p for p in d.glob("*.log") if not p.name.endswith(".previous.log"))
            if not logs:
                raise FileNotFoundError(f"no logs for pod {namespace}/{pod} in {d}")
            if len(logs) > 1:
                raise ValueError(f"pod {namespace}/{pod} has several containers: name one")
            container = logs[0].name[: -len(".log")]
        path = d / (f"{container}.previous.log" if previous else f"{container}.log")
        return path.read_text(errors="replace")

    def wait_for(
        self, predicate: Any, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
    ) -> Any:
        """Poll ``predicate()`` until it returns a truthy value; return it (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as e:  # transient API errors while waiting
                last_exc = e
            time.sleep(interval)
        raise TimeoutError(
            f"{what} not met after {timeout} s" + (f" (last error: {last_exc})" if last_exc else "")
        )

    def get(self, *args: str) -> dict[str, Any]:
        """``kubectl get ARGS -o json`` parsed."""
        return dict(json.loads(self.kubectl("get", *args, "-o", "json").stdout))

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]]) -> str:
        """``kubectl apply -f -`` of YAML text or objects; returns kubectl's output."""
        if not isinstance(manifest, str):
            docs = manifest if isinstance(manifest, list) else [manifest]
            manifest = yaml.safe_dump_all(docs)
        return self.kubectl("apply", "-f", "-", input=manifest).stdout

    def status_text(self) -> str:
        """A short human summary: server, kubeconfig, processes."""
        lines = [
            f"server:     {self.server}",
            f"kubeconfig: {self.kubeconfig}",
            f"pod range:  {self.pod_prefix}.x.y",
        ]
        if self.prometheus_url:
            lines.append(f"prometheus: {self.prometheus_url}")
        for name, pid in sorted(self.pids().items()):
            if name.startswith("pod:"):  # pod:<ns>/<pod>/<uid>/<container>
                ns, pod, _uid, container = name[4:].split("/")
                name = f"pod {ns}/{pod} [{container}]"
            lines.append(f"  {name:<40} pid {pid}")
        return "\n".join(lines)


def _is_extra(name: str) -> bool:
    """A registered process that is not the cluster's own (supervisor, control plane, pod containers)."""
    return name not in ("supervisor", PROMETHEUS) and name not in PROCESSES and not name.startswith("pod:")


def running_pids(state_dir: Path) -> dict[str, int]:
    """Processes of the cluster in ``state_dir`` still running (for ``status`` and tests)."""
    return {k: v[0] for k, v in PidRegistry(Layout(state_dir).pids).alive_items().items()}
