"""bench/operator_scale.py --probes at a small size (3 OmegaVLMs x 2 stand-in pods), so the mode
cannot rot: every pod Ready, probe rounds observed, no writes while idle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import scale_probes

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


def test_probes_mode_at_a_small_size(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    cmd = [sys.executable, str(REPO / "bench" / "operator_scale.py"), "--probes", "--count", "3"]
    cmd += ["--idle", "15", "--quiet", "8", "--probe-interval", "2", "--json", str(out)]
    proc = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert fig["pods"] == fig["pods_ready"] == 6
    assert fig["api_writes_per_idle_minute"] == 0
    assert fig["probe_rounds_in_window"] >= 6  # 3 objects, a round every ~2 s, 15 s
    assert fig["probe_round_target_s"] == 4.0
    assert fig["probe_rounds_within_target"] == 1.0
    assert fig["standin_processes"] >= 6
    assert fig["command"].startswith(".venv/bin/python bench/operator_scale.py --probes")


def test_round_figures_from_two_scrapes() -> None:
    before = {"1.0": 0.0, "5.0": 1.0, "10.0": 1.0, "+Inf": 1.0, "sum": 3.0, "count": 1.0}
    after = {"1.0": 0.0, "5.0": 9.0, "10.0": 10.0, "+Inf": 11.0, "sum": 63.0, "count": 11.0}
    fig = scale_probes.round_figures(before, after, 5.0)
    assert fig["probe_rounds_in_window"] == 10
    assert fig["probe_round_mean_s"] == 6.0
    assert fig["probe_round_p50_le_s"] == 5.0
    assert fig["probe_round_p95_le_s"] == float("inf")
    assert fig["probe_rounds_within_target"] == 0.8
