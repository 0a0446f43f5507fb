"""The demo's operator process: start ``python -m omega_operator`` in the background, register it with the
cluster (``devcluster down`` stops it, Prometheus scrapes it), stop it.

Also the demo's two small I/O helpers (``say``: print a line at once; ``no_proxy``: an HTTP client
that ignores proxy settings), shared by the demo's modules.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx

from devcluster import monitors, prometheus
from devcluster.cluster import Cluster
from devcluster.procs import PidRegistry, alive, signal_group, spawn
from devcluster.settings import repo_root

OPERATOR = "omega-operator"  # its name in the cluster's pid registry (and in `devcluster status`)
PROBE_INTERVAL_S = 2.0  # the operator's /health probe interval for the demo (default 10 s)


def say(text: str) -> None:
    """Print a line of the demo at once."""
    print(text, flush=True)


def no_proxy() -> httpx.Client:
    """An HTTP client for pod and operator addresses: proxy settings of the host do not apply."""
    return httpx.Client(trust_env=False, timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def operator_log(c: Cluster) -> Path:
    """Where the demo operator writes: ``<state>/logs/operator.log``."""
    return c.layout.logs / "operator.log"


def stop_operator(c: Cluster, grace_s: float = 10.0) -> int | None:
    """Stop the operator registered in this cluster's pid registry (if any); return its pid."""
    registry = PidRegistry(c.layout.pids)
    entry = registry.items().get(OPERATOR)
    if not entry:
        return None
    pid, ticks = entry[0], entry[1] or None
    if alive(pid, ticks):
        signal_group(pid, signal.SIGTERM)  # it leads its own process group (start_new_session)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and alive(pid, ticks):
            time.sleep(0.1)
        if alive(pid, ticks):
            signal_group(pid, signal.SIGKILL)
    registry.remove(OPERATOR)
    prometheus.remove_target(c.state_dir, OPERATOR)
    return pid


def register(c: Cluster, pid: int) -> None:
    """Put the operator in the pid registry: ``devcluster down`` stops whatever is registered.

    The supervisor rewrites the same file when pods start and stop; check that the entry stuck.
    """
    registry = PidRegistry(c.layout.pids)
    for _ in range(20):
        registry.add(OPERATOR, pid)
        time.sleep(0.05)
        if registry.items().get(OPERATOR, [0])[0] == pid:
            return
    raise RuntimeError(f"could not register the operator (pid {pid}) in {c.layout.pids}")


def start_operator(
    c: Cluster, namespaces: str = "", probe_interval_s: float = PROBE_INTERVAL_S, timeout: float = 60.0
) -> tuple[int, int]:
    """Start ``python -m omega_operator`` in the background; return (pid, metrics port).

    It runs in its own session (it outlives the demo), logs to ``operator.log`` and is stopped by
    ``python -m devcluster down``. One started by an earlier demo is stopped first, so the one
    that runs is always today's code with these settings. ``namespaces``: empty = cluster-wide.
    """
    old = stop_operator(c)
    if old is not None:
        say(f"stopped the operator of an earlier demo (pid {old})")
    metrics_port, liveness_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMEGA_OPERATOR_")}
    env.update(
        KUBECONFIG=str(c.kubeconfig),
        OMEGA_OPERATOR_NAMESPACES=namespaces,
        OMEGA_OPERATOR_PROBE_INTERVAL=str(probe_interval_s),
        OMEGA_OPERATOR_METRICS_PORT=str(metrics_port),
        OMEGA_OPERATOR_LIVENESS_PORT=str(liveness_port),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    log = operator_log(c)
    with log.open("a") as f:
        f.write(
            f"\n---- started by the omega-vlm demo at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        )
    proc = spawn([sys.executable, "-m", "omega_operator"], log, env=env, cwd=repo_root())
    register(c, proc.pid)
    shown_env = " ".join(
        f"{k}={env[k]}"
        for k in (
            "OMEGA_OPERATOR_PROBE_INTERVAL",
            "OMEGA_OPERATOR_NAMESPACES",
            "OMEGA_OPERATOR_METRICS_PORT",
            "OMEGA_OPERATOR_LIVENESS_PORT",
        )
        if env[k]
    )
    say(f"$ KUBECONFIG={c.kubeconfig} {shown_env} python -m omega_operator >> {log} 2>&1 &")
    # kopf's liveness endpoint answers once the operator is up and watching.
    t0 = time.monotonic()
    with no_proxy() as http:
        while True:
            if proc.poll() is not None:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
                raise RuntimeError(f"the operator exited with code {proc.returncode}:\n{tail}")
            try:
                if http.get(f"http://127.0.0.1:{liveness_port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the operator was not live after {timeout:.0f} s; see {log}")
            time.sleep(0.2)
    scope = f"namespace {namespaces}" if namespaces else "all namespaces"
    say(
        f"operator pid {proc.pid} live after {time.monotonic() - t0:.1f} s, watching {scope}; "
        f"/healthz on :{liveness_port}, /metrics on :{metrics_port}\n"
        f"registered as '{OPERATOR}' with the cluster: `python -m devcluster down` stops it\n"
    )
    # Scraped by the cluster's Prometheus as the chart's ServiceMonitor would scrape its Service.
    if prometheus.add_target(c.state_dir, OPERATOR, monitors.operator_entry(f"127.0.0.1:{metrics_port}")):
        say(f"Prometheus ({c.prometheus_url}) scrapes its /metrics (job {monitors.OPERATOR_SERVICE})\n")
    return proc.pid, metrics_port


# ---------------------------------------------------------------- 4. apply, watch the fallback
