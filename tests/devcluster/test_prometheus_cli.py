"""``python -m devcluster up --prometheus``: Prometheus runs under the supervisor, ``status`` names
it, it is ready and has loaded the chart's rules; ``down`` (``make cluster-down``) stops it too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devcluster import Cluster
from devcluster import prometheus as prom
from devcluster.cluster import running_pids
from devcluster.procs import alive
from devcluster.promapi import PromApi

pytestmark = [pytest.mark.devcluster, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devcluster", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
    )


def test_up_with_prometheus_then_down(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    up = _cli(state, "up", "--prometheus")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        c = Cluster.attach(state)
        url = c.prometheus_url
        assert url and url.startswith("http://127.0.0.1:") and f"prometheus: {url}" in up.stdout
        pid = c.pids()[prom.PROCESS]
        assert prom.ready(url)
        with PromApi(url) as api:
            groups = api.rules()
            assert {r["name"] for g in groups for r in g["rules"]} >= {"OmegaVLMFlashAttentionDegraded"}
            jobs = {t["scrapePool"] for t in api.targets()}  # no pods, no operator yet: none active
            assert all(j.startswith(("podMonitor/", "serviceMonitor/")) for j in jobs), jobs
        status = _cli(state, "status")
        assert f"prometheus: {url}" in status.stdout and "prometheus " in status.stdout
        # The supervisor is its parent: it runs in the cluster's process registry under its name.
        assert Path(f"/proc/{pid}/cmdline").read_text().split("\0")[0].endswith("prometheus")
    finally:
        down = _cli(state, "down")
    assert down.returncode == 0, down.stderr
    assert not alive(pid)
    assert running_pids(state) == {}
