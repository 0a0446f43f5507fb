"""Starting and stopping local processes: own process groups, SIGTERM then SIGKILL, a pid registry.

The registry (``pids.json`` in the state folder) lets ``down`` find every process of a cluster
even when the supervisor died, and the start time guards against killing a reused pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/pid/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) if fields[0] != "Z" else None


def alive(pid: int, ticks: int | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, when ``ticks`` is given, is the same process."""
    now = proc_start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid`` (every process here leads its own group).

    Only the group is signalled, never a bare pid: once a group is empty its number may be a new,
    unrelated process's pid.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_pid(
    pid: int, grace_s: float, ticks: int | None = None, proc: subprocess.Popen | None = None
) -> None:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL; reaps ``proc`` when given."""
    if ticks is None:
        ticks = proc_start_ticks(pid)
    if not alive(pid, ticks):
        if proc is not None:
            proc.poll()
        return
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        if not alive(pid, ticks):
            break
        time.sleep(0.05)
    # The group may still hold children even when the leader exited.
    signal_group(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class PidRegistry:
    """A JSON file of {name: [pid, start_ticks]} shared by the supervisor and ``down``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Threads of this process and other processes (supervisor, CLI, demo) write the same file."""
        with self._thread_lock, self.path.with_suffix(".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self) -> dict[str, list[int]]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return {}

    def _write(self, data: dict[str, list[int]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)

    def add(self, name: str, pid: int) -> None:
        with self._lock():
            data = self._read()
            data[name] = [pid, proc_start_ticks(pid) or 0]
            self._write(data)

    def remove(self, name: str) -> None:
        with self._lock():
            data = self._read()
            data.pop(name, None)
            self._write(data)

    def items(self) -> dict[str, list[int]]:
        return self._read()

    def alive_items(self) -> dict[str, list[int]]:
        """Registered processes that still run."""
        return {k: v for k, v in self._read().items() if alive(v[0], v[1] or None)}

    def kill_all(self, grace_s: float, only: Callable[[str], bool] | None = None) -> list[str]:
        """Stop every registered process still alive (SIGTERM, then SIGKILL), or only those whose
        name ``only`` accepts; unregister them and return their names."""
        me = os.getpid()
        left = {k: v for k, v in self.alive_items().items() if v[0] != me and (only is None or only(k))}
        for pid, _ticks in left.values():
            signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p, t or None) for p, t in left.values()):
            time.sleep(0.1)
        for pid, ticks in left.values():
            if alive(pid, ticks or None):
                signal_group(pid, signal.SIGKILL)
        if self.path.exists():
            with self._lock():
                data = self._read()
                self._write({k: v for k, v in data.items() if only is not None and not only(k)})
        return list(left)


def spawn(
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen:
    """Start ``argv`` in its own session (process group), stdout+stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            pass_fds=pass_fds,
        )
