"""Measure on devcluster: fallback decision -> Ready on sdpa for an hf:// model, cache vs no cache.

An OmegaVLM (attention auto, replicas 1) serves `hf://omega-bench/tiny-1g` from the Hub stand-in
(tests/hub_standin.py, HF_ENDPOINT): a tiny checkpoint made by `omega_server.tiny` plus a 1 GB
weight file (`extra-1g.bin`, random bytes: downloaded and cached like any file of the snapshot,
not loaded by the tiny model). The flash variant cannot load flash-attn here, so the operator
rolls back to sdpa. Measured per run: from the Deployment's switch to the sdpa image (the
fallback decision's write, polled every 0.2 s) to the sdpa pod Ready; and the bytes the stand-in
served for the sdpa pod. With `spec.model.cache` the sdpa pod reads the cache; without one it
downloads the snapshot again into its emptyDir.

Usage (repo root, after `make setup build-cluster`)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/model_cache_fallback.py --runs 1 [--throttle-mbps 100] \\
        --out bench/results/model_cache_fallback-devcluster-DATE.json

Real parts only: a devcluster (temp state folder), the operator process, the server processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devcluster import TEST_KUBELET, Cluster  # noqa: E402
from tests.e2e.fallback_support import (  # noqa: E402
    SDPA_IMAGE,
    OperatorProcess,
    all_ready_on,
    deployed_image,
    install_crd,
    make_namespace,
    omegavlm,
    tiny_checkpoint,
)
from tests.hub_standin import HubStandIn  # noqa: E402
from tests.polling import wait_for  # noqa: E402

REPO_ID = "omega-bench/tiny-1g"
BIG = "extra-1g.bin"


def make_hub(root: Path, size: int) -> Path:
    repo = root / REPO_ID
    if not (repo / "config.json").exists():
        shutil.copytree(tiny_checkpoint(root / "_tiny"), repo)
    big = repo / BIG
    if not big.exists() or big.stat().st_size != size:
        with big.open("wb") as f:
            left = size
            while left:
                n = min(left, 16 << 20)
                f.write(os.urandom(n))
                left -= n
    return repo


def one_run(cluster: Cluster, hub: HubStandIn, tmp: Path, cached: bool) -> dict[str, Any]:
    ns = make_namespace(cluster, "bench-cache")
    body = omegavlm("bench", ns, tmp, attention="auto", replicas=1)
    spec = body["spec"]
    spec["model"] = {"name": "tiny", "uri": f"hf://{REPO_ID}"}
    if cached:
        spec["model"]["cache"] = {"size": "4Gi", "accessMode": "ReadWriteMany"}
    spec["env"] = [
        {"name": "HF_ENDPOINT", "value": hub.url},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    op = OperatorProcess(cluster, ns, tmp / f"operator-{ns}.log").start()
    try:
        applied = time.monotonic()
        cluster.apply(body)
        wait_for(
            lambda: deployed_image(cluster, ns, "bench") == SDPA_IMAGE,
            900,
            "the switch to sdpa",
            interval=0.2,
        )
        decided = time.monotonic()
        before = sum(hub.downloads.values()), dict(hub.downloads)
        wait_for(lambda: all_ready_on(cluster, ns, SDPA_IMAGE, 1), 900, "sdpa Ready", interval=0.2)
        ready = time.monotonic()
        after = dict(hub.downloads)
        new_big = after.get(f"{REPO_ID}/{BIG}", 0) - before[1].get(f"{REPO_ID}/{BIG}", 0)
        return {
            "cache": cached,
            "apply_to_decision_s": round(decided - applied, 2),
            "decision_to_sdpa_ready_s": round(ready - decided, 2),
            "file_downloads_after_decision": sum(after.values()) - before[0],
            "big_file_downloads_after_decision": new_big,
        }
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--size-mb", type=int, default=1000, help="size of the big weight file (MB, 10^6 bytes)")
    p.add_argument("--throttle-mbps", type=float, default=None, help="stand-in rate per file body (MB/s)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    repo = make_hub(tmp / "hub", a.size_mb * 1_000_000)
    bps = int(a.throttle_mbps * 1e6) if a.throttle_mbps else None
    results: list[dict[str, Any]] = []
    with (
        Cluster.start(tmp / "cluster", kubelet=TEST_KUBELET, owner_pid=os.getpid()) as cluster,
        HubStandIn(tmp / "hub", throttle_bps=bps) as hub,
    ):
        install_crd(cluster)
        for i in range(a.runs):
            for cached in (True, False):
                r = one_run(cluster, hub, tmp, cached)
                r["run"] = i
                print(json.dumps(r), flush=True)
                results.append(r)
    rate = f"throttled to {a.throttle_mbps} MB/s per file" if bps else "unthrottled"
    report = {
        "what": "fallback decision (Deployment switched to sdpa) -> sdpa pod Ready, hf:// model, cache vs no cache",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "weight_file_bytes": (repo / BIG).stat().st_size,
        "snapshot_bytes": sum(f.stat().st_size for f in repo.rglob("*") if f.is_file()),
        "stand_in": f"tests/hub_standin.py on loopback, {rate}",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
        "runs": results,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
