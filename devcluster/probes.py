"""Container probes (httpGet, tcpSocket, exec), their success/failure bookkeeping, and preStop hooks.

``exec`` commands run inside the container when ``wrap`` is given (the launcher's join mode).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

Wrap = Callable[[list[str]], list[str]] | None


def resolve_port(port: int | str, container: dict[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def run_probe(
    probe: dict[str, Any],
    container: dict[str, Any],
    pod_ip: str,
    http: httpx.Client,
    env: dict[str, str],
    wrap: Wrap = None,
    timeout: float | None = None,
) -> tuple[bool, str]:
    """Run one probe (or hook handler) once; (success, why it failed)."""
    timeout = float(probe.get("timeoutSeconds", 1)) if timeout is None else timeout
    try:
        if "httpGet" in probe:
            g = probe["httpGet"]
            host = g.get("host") or pod_ip
            scheme = g.get("scheme", "HTTP").lower()
            url = f"{scheme}://{host}:{resolve_port(g['port'], container)}{g.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in g.get("httpHeaders") or []}
            r = http.get(url, headers=headers, timeout=timeout)
            if 200 <= r.status_code < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {r.status_code}"
        if "tcpSocket" in probe:
            t = probe["tcpSocket"]
            with socket.create_connection(
                (t.get("host") or pod_ip, resolve_port(t["port"], container)), timeout
            ):
                return True, ""
        if "exec" in probe:
            command = list(probe["exec"]["command"])
            r2 = subprocess.run(
                wrap(command) if wrap else command, env=env, capture_output=True, timeout=timeout, check=False
            )
            if r2.returncode == 0:
                return True, ""
            out = (r2.stdout + r2.stderr).decode(errors="replace")[-200:]
            return False, f"command {command!r} exited with {r2.returncode}: {out}"
    except (httpx.HTTPError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        return False, f"{type(e).__name__}: {e}"
    return False, "unsupported probe handler"


def run_hook(
    hook: dict[str, Any],
    container: dict[str, Any],
    pod_ip: str,
    http: httpx.Client,
    env: dict[str, str],
    wrap: Wrap,
    timeout: float,
    cancelled: Callable[[], bool],
) -> tuple[bool, str]:
    """A lifecycle hook (exec, httpGet, or sleep, which API servers before 1.29 drop), within ``timeout``."""
    if "sleep" in hook:
        deadline = time.monotonic() + min(float(hook["sleep"].get("seconds", 0)), timeout)
        while time.monotonic() < deadline and not cancelled():
            time.sleep(0.05)
        return True, ""
    if "exec" in hook or "httpGet" in hook:
        return run_probe(hook, container, pod_ip, http, env, wrap, timeout=timeout)
    return False, "unsupported lifecycle hook handler"


@dataclass
class ProbeTracker:
    """Schedule and thresholds of one probe of one running container."""

    spec: dict[str, Any]
    started_at: float
    successes: int = 0
    failures: int = 0
    result: bool = False
    next_at: float = 0.0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.next_at = self.started_at + float(self.spec.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    def due(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) >= self.next_at

    def record(self, ok: bool, error: str, now: float | None = None) -> None:
        """Count one outcome; flip ``result`` at successThreshold/failureThreshold."""
        self.next_at = (now if now is not None else time.monotonic()) + self.period
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            self.last_error = error
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.result = False

    @property
    def failed_out(self) -> bool:
        """True once failures reached failureThreshold (liveness/startup: restart the container)."""
        return self.failures >= int(self.spec.get("failureThreshold", 3))
