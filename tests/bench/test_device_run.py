"""bench/device_run.sh end to end on the CPU: one call prints the versions and the bandwidth, runs our
engine over HTTP and the peer each in its own process, and leaves one merged results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_one_call_runs_the_parts_and_writes_one_results_file(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "PY": sys.executable,
        "OUT": str(out),
        "WORKDIR": str(work),
        "BENCH_COMMIT": "abc1234",
        "OMP_NUM_THREADS": "1",
    }
    args = [
        "--models=tiny_qwen2_5_vl",
        "--backends=sdpa",
        "--device=cpu",
        "--dtype=float32",
        "--cells=http:1",
        "--prompt-tokens=80",
        "--output-tokens=4",
        "--image-size=56",
        "--peer=generate_batch",
        '--peer-cb-config={"num_blocks": 16, "max_batch_tokens": 256}',
        "--peer-tokens=3",
        "--copy-gib=0.01",
        "--deadline=400",
        "--tag=cpu-test",
    ]
    proc = subprocess.run(
        ["bash", "bench/device_run.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results,) = out.glob("cpu-*-cpu-test.json")
    rows = json.loads(results.read_text())
    assert [(r["driver"], r["concurrency"]) for r in rows] == [("http", 1), ("peer", 1)]
    assert all(r["output_tokens_per_s"] and not r.get("error") for r in rows)
    for r in rows:
        assert r["versions"]["git"] == "abc1234" and r["versions"]["git_source"] == "BENCH_COMMIT"
        assert r["bandwidth"]["copy_bytes_per_s"] > 0
    gpu = (out / "gpu.txt").read_text()
    assert '"source_digest"' in gpu and '"copy_bytes_per_s"' in gpu
    assert "wrote 2 rows" in (out / "log.txt").read_text()
