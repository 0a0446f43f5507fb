"""The probes mode of ``bench/operator_scale.py``: pods that answer ``/health``, and the figures of
the operator's probe rounds.

The pods run ``tests/health_standin.py`` (stdlib, a few MB each, the real ``/health`` bodies rendered
by the server's own code; Ready on flash for a flash ``ATTN_IMPL``): 400 real servers do not fit one
machine. The probe round of an object is the time between the starts of two consecutive refreshes
of it, which the operator exposes as the histogram ``omega_operator_refresh_period_seconds``; the
bench scrapes it before and after the idle window and reports the window's share.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.request
from pathlib import Path

from devcluster import Cluster
from devcluster.nodes import H100_SXM, NodeSpec
from tests import health_standin

PERIOD = "omega_operator_refresh_period_seconds"


def bench_nodes(pods: int) -> tuple[NodeSpec, ...]:
    """H100 SXM nodes of 8 GPUs enough for ``pods`` one-GPU pods (devcluster's default nodes have 18
    Hopper GPUs: 400 pods need 50 nodes). Only these nodes: the pods land nowhere else."""
    return tuple(
        NodeSpec(f"h100-bench-{i}", H100_SXM, 8, cpu="208", memory="2015Gi")
        for i in range(max(1, -(-pods // 8)))
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the operator's /metrics)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def register_standin(cluster: Cluster, image_repo: str, state: Path) -> None:
    """Both variants of ``image_repo``'s tag v1 run the health stand-in, as the server image's user."""
    bodies = health_standin.write_bodies(state / "standin-bodies.json")
    for variant in ("flash", "sdpa"):
        cluster.add_image(
            f"{image_repo}:v1-{variant}", health_standin.command(sys.executable, bodies), uid=10001
        )


def scrape_period(port: int) -> dict[str, float]:
    """The refresh-period histogram's cumulative buckets (``le`` -> count), plus ``sum`` and ``count``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{PERIOD}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{PERIOD}_sum "):
            out["sum"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{PERIOD}_count "):
            out["count"] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_quantile(delta: dict[str, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` of a histogram difference (None if empty)."""
    bounds = sorted((float(k), v) for k, v in delta.items() if k not in ("sum", "count"))
    total = delta.get("count", 0.0)
    if total <= 0:
        return None
    for bound, cum in bounds:
        if cum >= q * total:
            return bound
    return float("inf")


def round_figures(before: dict[str, float], after: dict[str, float], within_s: float) -> dict[str, object]:
    """The probe-round figures of the window between two scrapes; ``within_s``: the target
    (the probe interval + 2 s), which must be one of the histogram's bounds."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    n = delta.get("count", 0.0)
    bound = next((v for k, v in delta.items() if k not in ("sum", "count") and float(k) == within_s), None)
    return {
        "probe_rounds_in_window": int(n),
        "probe_round_mean_s": round(delta["sum"] / n, 2) if n else None,
        "probe_round_p50_le_s": bucket_quantile(delta, 0.5),
        "probe_round_p95_le_s": bucket_quantile(delta, 0.95),
        "probe_round_p99_le_s": bucket_quantile(delta, 0.99),
        "probe_round_target_s": within_s,
        "probe_rounds_within_target": round(bound / n, 4) if n and bound is not None else None,
    }


def pods_ready(cluster: Cluster, namespace: str) -> tuple[int, int]:
    """(live pods, Ready pods) of the namespace."""
    items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    ready = sum(
        1
        for p in live
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    )
    return len(live), ready


def mem_available_mib() -> float:
    """The machine's MemAvailable, MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def standin_rss_mib() -> tuple[int, float]:
    """(count, total RSS MiB) of the health stand-in processes on this machine."""
    n, kib = 0, 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if str(health_standin.SCRIPT) not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        rss = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
        if rss:
            n, kib = n + 1, kib + int(rss.split()[1])
    return n, round(kib / 1024, 1)


def probe_figures(
    cluster: Cluster, namespace: str, before: dict[str, float], after: dict[str, float], interval: float
) -> dict[str, object]:
    """The probes mode's figures: the pods, the probe rounds of the idle window, memory."""
    live, ready = pods_ready(cluster, namespace)
    n, rss = standin_rss_mib()
    return {
        "pods": live,
        "pods_ready": ready,
        "probe_interval_s": interval,
        **round_figures(before, after, interval + 2.0),
        "standin_processes": n,
        "standin_rss_mib_total": rss,
        "mem_available_mib_at_end": mem_available_mib(),
    }
