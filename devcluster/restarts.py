"""Restart requests for control-plane processes: a file the caller writes, the supervisor carries out.

``Cluster.restart_component("kube-apiserver", down_s=5)`` writes ``restart-<name>.json`` into the state
folder; the supervisor's watch loop (once a second) stops that process (SIGTERM, SIGKILL after 5 s),
keeps it down ``down_s`` seconds, starts it again with the same command line (same ports, certificates
and etcd data), waits until it answers its health check, and writes ``restart-<name>.done.json`` with
the times. For fault experiments (bench/reliability/): the API server or etcd gone mid-reconcile.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

#: The processes that can be restarted (the order of controlplane.PROCESSES).
RESTARTABLE = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


def request_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"restart-{name}.json"


def done_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"restart-{name}.done.json"


def request(state_dir: Path, name: str, down_s: float = 0.0) -> None:
    """Ask the supervisor to restart ``name`` (one of :data:`RESTARTABLE`)."""
    if name not in RESTARTABLE:
        raise ValueError(f"cannot restart {name!r}: one of {RESTARTABLE}")
    done_path(state_dir, name).unlink(missing_ok=True)
    tmp = request_path(state_dir, name).with_suffix(".tmp")
    tmp.write_text(json.dumps({"down_s": float(down_s), "requested_at": time.time()}))
    tmp.replace(request_path(state_dir, name))


def pending(state_dir: Path) -> list[tuple[str, float]]:
    """The requests waiting (the supervisor's side): (name, down_s); each request file is consumed."""
    out = []
    for name in RESTARTABLE:
        path = request_path(state_dir, name)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        path.unlink(missing_ok=True)
        out.append((name, float(data.get("down_s", 0.0))))
    return out


def report(state_dir: Path, name: str, result: dict[str, Any]) -> None:
    """The supervisor's answer: stopped_at, started_at, healthy_at (epoch seconds) or error."""
    done_path(state_dir, name).write_text(json.dumps(result))


def wait_done(state_dir: Path, name: str, timeout: float) -> dict[str, Any]:
    """Wait for the supervisor's answer to a request; raises TimeoutError or RuntimeError (its error)."""
    deadline = time.monotonic() + timeout
    path = done_path(state_dir, name)
    while time.monotonic() < deadline:
        try:
            result = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.1)
            continue
        if result.get("error"):
            raise RuntimeError(f"restart of {name} failed: {result['error']}")
        return result
    raise TimeoutError(f"restart of {name} not done after {timeout:.0f} s")
