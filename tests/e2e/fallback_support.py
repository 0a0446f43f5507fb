"""Helpers for the fallback end-to-end tests: the operator as a real process, the CRD, tiny
checkpoints, OmegaVLM manifests and polling of what kubectl shows.

Everything is real: the devcluster API server, the operator process (``python -m omega_operator``),
the inference-server processes the process kubelet starts for the pods.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from devcluster import Cluster
from tests.polling import wait_for as wait_for  # re-exported for the e2e tests

REPO = Path(__file__).resolve().parents[2]
PYTHON = (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)
REPOSITORY = "registry.example.com/omega-vlm-server"
# A tag of our own: other test modules map full images such as `<repo>:v0.1.0-flash` to
# stand-in commands in the shared devcluster; ours must reach the real server (repository suffix).
TAG = "fallback-e2e"
FLASH_IMAGE = f"{REPOSITORY}:{TAG}-flash"
SDPA_IMAGE = f"{REPOSITORY}:{TAG}-sdpa"
PROBE_INTERVAL = 2.0  # seconds, for the tests (the default is 10)


def install_crd(cluster: Cluster) -> None:
    """Apply the CRD rendered from the pydantic models (the single source) and wait until Established."""
    from omega_operator import crdgen

    # 1.20 does not know x-kubernetes-validations (CEL): client-side validation would refuse it.
    cluster.kubectl("apply", "--validate=false", "-f", "-", input=crdgen.render())
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/omegavlms.vlm.omega.io")


def make_namespace(cluster: Cluster, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    return ns


def tiny_checkpoint(out: Path, arch: str = "qwen2_5_vl") -> Path:
    """A tiny random checkpoint written by the server's own tool (``python -m omega_server.tiny``);
    built once per path (the test modules share one under the session's base temp folder)."""
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [PYTHON, "-m", "omega_server.tiny", "--arch", arch, "--out", str(out)],
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            timeout=300,
        )
    return out


def omegavlm(
    name: str,
    namespace: str,
    model_dir: Path,
    *,
    attention: str = "auto",
    replicas: int = 1,
    image: dict[str, Any] | None = None,
    fallback: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    gpu: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An OmegaVLM manifest serving a tiny checkpoint from ``file://`` (``gpu``: its spec.gpu)."""
    spec: dict[str, Any] = {
        "model": {"name": "tiny", "uri": f"file://{model_dir}"},
        "replicas": replicas,
        "image": image or {"repository": REPOSITORY, "tag": TAG},
        "attention": attention,
        "runtime": {
            "maxBatchSize": 2,
            "maxModelLength": 512,
            "dtype": "float32",
            "startupTimeoutSeconds": 600,
        },
        # The process kubelet maps resources to nothing, but keep them small and explicit.
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
    }
    if fallback is not None:
        spec["fallback"] = fallback
    if gpu is not None:
        spec["gpu"] = gpu
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "vlm.omega.io/v1alpha1", "kind": "OmegaVLM", "metadata": meta, "spec": spec}


class OperatorProcess:
    """``python -m omega_operator`` against the devcluster, watching one namespace.

    ``module``: the entry point to run (``tests.e2e.failpoint_operator`` for the crash test)."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        module: str = "omega_operator",
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.log_path = log_path
        self.extra_env = env or {}
        self.module = module
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("OMEGA_OPERATOR_")}
        env = {
            **inherited,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "OMEGA_OPERATOR_NAMESPACES": self.namespace,
            "OMEGA_OPERATOR_PROBE_INTERVAL": str(PROBE_INTERVAL),
            "OMEGA_OPERATOR_METRICS_PORT": "0",
            "OMEGA_OPERATOR_LIVENESS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", self.module],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(REPO),
            )
        return self

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds (only this process, by its pid)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def running_operator(
    cluster: Cluster, namespace: str, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[OperatorProcess]:
    """An operator process for the ``with`` block: on a failure inside it, ``dump`` is printed
    (pytest shows it); the process is stopped either way."""
    op = OperatorProcess(cluster, namespace, log_path, env=env).start()
    try:
        yield op
    except BaseException:
        print(dump(cluster, namespace, op))
        raise
    finally:
        op.stop()


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", *args, "-o", "json").stdout))


def ovlm(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return get_json(cluster, "omegavlm", name, "-n", namespace)


def deployment(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def server_container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    return next((c for c in containers if c.get("name") == "server"), containers[0])


def deployed_image(cluster: Cluster, namespace: str, name: str) -> str | None:
    """The server image of the Deployment ``name`` (None while there is none)."""
    dep = deployment(cluster, namespace, name)
    return server_container(dep)["image"] if dep else None


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return list(get_json(cluster, "pods", "-n", namespace).get("items") or [])


def events(cluster: Cluster, namespace: str, reason: str | None = None) -> list[dict[str, Any]]:
    items = list(get_json(cluster, "events", "-n", namespace).get("items") or [])
    return [e for e in items if reason is None or e.get("reason") == reason]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def replica_set_images(cluster: Cluster, namespace: str) -> set[str]:
    """Images of every ReplicaSet the Deployment ever had (revision history)."""
    out = set()
    for rs in get_json(cluster, "replicasets", "-n", namespace).get("items") or []:
        for c in rs["spec"]["template"]["spec"]["containers"]:
            out.add(c["image"])
    return out


def all_ready_on(cluster: Cluster, namespace: str, image: str, replicas: int) -> bool:
    """Exactly ``replicas`` live pods, all on ``image`` and Ready."""
    live = [p for p in pods(cluster, namespace) if not p["metadata"].get("deletionTimestamp")]
    if len(live) != replicas:
        return False
    for p in live:
        if p["spec"]["containers"][0]["image"] != image:
            return False
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions") or []}
        if conds.get("Ready") != "True":
            return False
    return True


def dump(cluster: Cluster, namespace: str, op: OperatorProcess | None = None) -> str:
    """What to print when a test fails: the object, pods, events and the operator's log tail."""
    parts = []
    for args in (
        ("get", "ovlm,deploy,rs,pods", "-n", namespace, "-o", "wide"),
        ("get", "events", "-n", namespace),
    ):
        parts.append(cluster.kubectl(*args, check=False).stdout)
    proc = cluster.kubectl("get", "ovlm", "-n", namespace, "-o", "yaml", check=False)
    parts.append(proc.stdout)
    if op is not None:
        parts.append("--- operator log (tail)\n" + "\n".join(op.log().splitlines()[-60:]))
    return "\n".join(parts)


def to_yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj)


class ReadySampler:
    """Counts the Ready, not terminating pods of a namespace every ``period`` seconds, in a thread."""

    def __init__(self, cluster: Cluster, namespace: str, period: float = 0.2) -> None:
        self.api = client.CoreV1Api(cluster.api_client())
        self.namespace, self.period = namespace, period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self) -> int:
        pods = self.api.list_namespaced_pod(self.namespace).items
        return sum(
            1
            for p in pods
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.count()))
            self._stop.wait(self.period)

    def __enter__(self) -> ReadySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def longest_below(self, floor: int) -> float:
        """The longest run of samples with fewer than ``floor`` Ready pods, in seconds."""
        longest, start = 0.0, None
        for t, n in self.samples:
            if n < floor and start is None:
                start = t
            elif n >= floor and start is not None:
                longest, start = max(longest, t - start), None
        if start is not None:
            longest = max(longest, self.samples[-1][0] - start)
        return longest


def add_health_standin(cluster: Cluster, images: tuple[str, ...], folder: Path) -> None:
    """Run ``images`` as the health stand-in of the server (``tests/health_standin.py``, uid 10001), its
    /health bodies rendered by the server's own code into ``folder``."""
    from tests import health_standin

    bodies = health_standin.write_bodies(folder / "bodies.json")
    for image in images:
        cluster.add_image(image, health_standin.command(PYTHON, bodies), uid=10001)
