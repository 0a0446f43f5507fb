"""One container of a pod: what the kubelet tracks for it, starting it through the launcher,
its termination message, and killing it the kubelet's way (preStop, SIGTERM, SIGKILL)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devcluster import podroot
from devcluster.podstatus import ContainerView, tail_message
from devcluster.probes import ProbeTracker, run_hook
from devcluster.procs import alive, signal_group, spawn
from devcluster.security import Credentials

MIN_GRACE_S = 2.0  # the kubelet's minimumGracePeriodInSeconds, also after a preStop hook
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

    def termination_message(self, code: int) -> str | None:
        """The termination-message file's content, else (FallbackToLogsOnError, failed exit) the log's tail."""
        with contextlib.suppress(OSError):
            if self.termination_log is not None:
                data = self.termination_log.read_bytes()[:TERMINATION_MESSAGE_MAX]
                if data:
                    return data.decode(errors="replace")
        if code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                return tail_message(self.log_path.read_bytes()) or None
        return None


def pull_failed(c: ContainerRuntime, now: float, event: Callable[..., None]) -> None:
    """An image devcluster has no command for: ErrImagePull, then ImagePullBackOff, as a kubelet shows."""
    if c.pull_failures == 0:
        c.first_pull_failure = now
        event("Pulling", f'Pulling image "{c.image}"', container=c.name)
        event(
            "Failed",
            f'Failed to pull image "{c.image}": rpc error: code = NotFound desc = failed to pull and '
            f'unpack image "{c.image}": not found (devcluster has no local command for this image)',
            "Warning",
            c.name,
        )
    c.pull_failures += 1
    if now - c.first_pull_failure < 2.0:
        message = f'rpc error: code = NotFound desc = failed to pull and unpack image "{c.image}": not found'
        c.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
    else:
        c.state = {
            "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{c.image}"'}
        }


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


def enter(
    c: ContainerRuntime,
    cdir: Path,
    creds: Credentials,
    cwd: str,
    argv: list[str],
    binds: list[dict[str, Any]],
    env: dict[str, str],
) -> str:
    """Start ``c`` through the launcher (``c.proc`` set); what went wrong before its exec, or ''."""
    root = cdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    try:
        plan = podroot.start_plan(root, creds, cwd, argv, binds, write_fd)
        (cdir / "plan.json").write_text(json.dumps(plan, indent=1))
        c.proc = spawn(podroot.launcher_argv(cdir / "plan.json"), c.log_path, env=env, pass_fds=(write_fd,))
    except OSError as e:
        os.close(read_fd)
        c.proc = None
        return str(e)
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
        return error
    c.join_plan = cdir / "join.json"
    c.join_plan.write_text(json.dumps(podroot.join_plan(c.proc.pid, creds, cwd)))
    return ""


def kill(
    c: ContainerRuntime,
    grace: float,
    pod_ip: str,
    http: httpx.Client,
    cancelled: Callable[[], bool],
    hook_failed: Callable[[str], None],
) -> None:
    """The kubelet's killContainer: preStop (within the grace period), then SIGTERM, then SIGKILL
    when what is left of the grace period (at least 2 s) has run out, or at once when ``cancelled``."""
    proc = c.proc
    if proc is None:
        return
    started = time.monotonic()
    hook = (c.spec.get("lifecycle") or {}).get("preStop")
    if hook and grace > 0 and proc.poll() is None:
        ok, why = run_hook(hook, c.spec, pod_ip, http, c.env, c.in_container(), grace, cancelled)
        if not ok:
            hook_failed(why)
    left = max(grace - (time.monotonic() - started), MIN_GRACE_S)
    signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + left
    while time.monotonic() < deadline and not cancelled():
        if proc.poll() is not None or not alive(proc.pid, c.ticks):
            break
        time.sleep(0.05)
    signal_group(proc.pid, signal.SIGKILL)  # the group may hold children even when the leader exited
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
