"""Start and stop a cluster twice in a row: ready each time, nothing left running afterwards."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from devcluster import TEST_KUBELET, Cluster, NodeSpec
from devcluster.cluster import running_pids
from devcluster.procs import alive

pytestmark = pytest.mark.devcluster


def _processes_mentioning(path: Path) -> list[int]:
    """Pids whose command line names ``path`` (the state folder is in every component's flags)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline:
            found.append(int(proc.name))
    return [p for p in found if alive(p)]


def test_start_stop_twice_leaves_nothing_running(tmp_path: Path) -> None:
    nodes = [NodeSpec("cpu-x")]
    for round_ in range(2):
        t0 = time.monotonic()
        with Cluster.start(tmp_path, nodes=nodes, kubelet=TEST_KUBELET, owner_pid=os.getpid()) as c:
            startup = time.monotonic() - t0
            assert c.kubectl("get", "--raw=/readyz").stdout.strip() == "ok"
            names = set(c.pids())
            assert {
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "supervisor",
            } <= names
            pids = list(c.pids().values())
        assert startup < 60, f"round {round_}: start took {startup:.1f} s"
        assert running_pids(tmp_path) == {}
        assert not [p for p in pids if alive(p)]
        assert _processes_mentioning(tmp_path) == []
