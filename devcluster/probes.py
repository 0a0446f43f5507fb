"""Container probes (httpGet, tcpSocket, exec) and their success/failure bookkeeping."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import httpx


def resolve_port(port: int | str, container: dict[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def run_probe(
    probe: dict[str, Any], container: dict[str, Any], pod_ip: str, http: httpx.Client, env: dict[str, str]
) -> tuple[bool, str]:
    """Run one probe once; (success, why it failed)."""
    timeout = float(probe.get("timeoutSeconds", 1))
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
            r2 = subprocess.run(
                probe["exec"]["command"], env=env, capture_output=True, timeout=timeout, check=False
            )
            if r2.returncode == 0:
                return True, ""
            return False, f"command exited {r2.returncode}: {r2.stdout.decode(errors='replace')[-200:]}"
    except (httpx.HTTPError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        return False, f"{type(e).__name__}: {e}"
    return False, "unsupported probe handler"


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
