"""Operator scale benchmark (issue 4): N OmegaVLMs on a fresh devcluster.

    .venv/bin/python bench/operator_scale.py [--count 200] [--replicas 0] [--idle 60] [--json out.json]
    .venv/bin/python bench/operator_scale.py --probes [--count 200] [--replicas 2]   # pods answer /health

Measures, with the operator running as a real process (`python -m omega_operator`, default settings
except the metrics/liveness ports):
  - create -> Deployment present: per object, from the create request's return to the Deployment's
    ADDED event on a watch (p50, p95, max);
  - time for all to be Ready: from the first create until every OmegaVLM reports Ready for its
    current generation (replicas 0: Ready=True ScaledToZero; no GPU pods are needed for this);
  - time for all to settle: until the operator's last write before a quiet window (--quiet);
  - operator memory (RSS now and peak, from /proc);
  - API writes per idle minute once settled (target 0), counted by the API server itself
    (`apiserver_request_total` for the operator's resources: OmegaVLM, status, Deployment,
    Service, PodDisruptionBudget), plus the writes per object during the creation burst.

``--probes`` (``bench/scale_probes.py``): the pods run the health-only stand-in
(``tests/health_standin.py``) and answer ``/health``, so the operator probes every pod each round;
all Ready then also means every pod Ready. Adds the probe round time during the idle window (the
``omega_operator_refresh_period_seconds`` histogram: mean, bucket p50/p95/p99, the share within the
probe interval + 2 s), the pods and the machine's memory (stand-ins' RSS, MemAvailable).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import scale_probes  # noqa: E402
from devcluster import TEST_KUBELET, Cluster  # noqa: E402
from devcluster.nodes import DEFAULT_NODES  # noqa: E402
from tests.e2e.operator_support import api_writes  # noqa: E402

NS = "bench"
IMAGE_REPO = "registry.example.com/omega-bench"


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def manifest(i: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "vlm.omega.io/v1alpha1",
        "kind": "OmegaVLM",
        "metadata": {"name": f"vlm-{i:04d}", "namespace": NS},
        "spec": {
            "model": {"name": f"m{i}", "uri": f"file:///models/m{i}"},
            "replicas": replicas,
            "image": {"repository": IMAGE_REPO, "tag": "v1"},
            "attention": "auto" if i % 2 else "sdpa",
            "runtime": {"maxBatchSize": 4},
        },
    }


def settled(cluster: Cluster, count: int) -> bool:
    items = json.loads(cluster.kubectl("get", "omegavlms", "-n", NS, "-o", "json").stdout)["items"]
    if len(items) < count:
        return False
    for obj in items:
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj["metadata"]["generation"]:
            return False
        ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), None)
        if not ready or ready["status"] != "True":
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument(
        "--replicas", type=int, default=None, help="pods per OmegaVLM (default 0; 2 with --probes)"
    )
    ap.add_argument("--probes", action="store_true", help="pods answer /health (the health stand-in)")
    ap.add_argument("--probe-interval", type=float, default=10.0, help="the operator's probe interval (s)")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle write counting")
    ap.add_argument("--quiet", type=float, default=15.0, help="write-free seconds that count as settled")
    ap.add_argument("--workers", type=int, default=8, help="concurrent create requests")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.replicas is None:
        args.replicas = 2 if args.probes else 0

    from kubernetes import client, watch
    from omega_operator import crdgen

    state = Path(tempfile.mkdtemp(prefix="bench-devcluster-"))
    nodes = scale_probes.bench_nodes(args.count * args.replicas) if args.probes else DEFAULT_NODES
    with Cluster.start(state, nodes, kubelet=TEST_KUBELET, owner_pid=os.getpid()) as cluster:
        cluster.kubectl("apply", "--validate=false", "-f", "-", input=crdgen.render())
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/omegavlms.vlm.omega.io")
        cluster.kubectl("create", "namespace", NS)
        if args.probes:
            scale_probes.register_standin(cluster, IMAGE_REPO, state)
        else:
            for variant in ("flash", "sdpa"):
                cluster.add_image(
                    f"{IMAGE_REPO}:v1-{variant}", ["sleep", "3600"], uid=10001
                )  # non-root, as the server image
        metrics_port = scale_probes.free_port() if args.probes else 0

        log = (state / "operator.log").open("wb")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OMEGA_OPERATOR_")},
            "KUBECONFIG": str(cluster.kubeconfig),
            "OMEGA_OPERATOR_METRICS_PORT": str(metrics_port),
            "OMEGA_OPERATOR_LIVENESS_PORT": "0",
            "OMEGA_OPERATOR_PROBE_INTERVAL": str(args.probe_interval),
        }
        op = subprocess.Popen(
            [sys.executable, "-m", "omega_operator"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        try:
            time.sleep(5)  # operator up, watches established
            api = client.CustomObjectsApi(cluster.api_client())
            apps = client.AppsV1Api(cluster.api_client())

            seen: dict[str, float] = {}
            stop = threading.Event()

            def watch_deployments() -> None:
                w = watch.Watch()
                while not stop.is_set():
                    for ev in w.stream(apps.list_namespaced_deployment, NS, timeout_seconds=5):
                        name = ev["object"].metadata.name
                        seen.setdefault(name, time.monotonic())
                        if stop.is_set():
                            break

            watcher = threading.Thread(target=watch_deployments, daemon=True)
            watcher.start()
            time.sleep(1)

            writes0 = api_writes(cluster)
            cpu0 = cpu_s(op.pid)
            created: dict[str, float] = {}

            def create(i: int) -> None:
                body = manifest(i, args.replicas)
                api.create_namespaced_custom_object("vlm.omega.io", "v1alpha1", NS, "omegavlms", body)
                created[body["metadata"]["name"]] = time.monotonic()

            t0 = time.monotonic()
            with ThreadPoolExecutor(args.workers) as pool:
                list(pool.map(create, range(args.count)))
            t_created = time.monotonic() - t0

            while len(seen) < args.count and time.monotonic() - t0 < 600:
                time.sleep(0.2)
            latencies = [seen[n] - created[n] for n in created if n in seen]
            while not settled(cluster, args.count):
                if time.monotonic() - t0 > 900:
                    raise TimeoutError("not settled after 900 s")
                time.sleep(1)
            t_ready = time.monotonic() - t0
            # Settled = every object Ready AND no operator write for a quiet window of one and a
            # half probe intervals; the settle time is when the last write before it happened.
            last, last_change = api_writes(cluster), time.monotonic()
            while time.monotonic() - last_change < args.quiet:
                time.sleep(1)
                now = api_writes(cluster)
                if now != last:
                    last, last_change = now, time.monotonic()
            t_settled = last_change - t0
            writes_burst = api_writes(cluster) - writes0
            rss_settled, _ = rss_kib(op.pid)
            cpu_burst = cpu_s(op.pid) - cpu0

            w1 = api_writes(cluster)
            period0 = scale_probes.scrape_period(metrics_port) if args.probes else {}
            time.sleep(args.idle)
            w2 = api_writes(cluster)
            period1 = scale_probes.scrape_period(metrics_port) if args.probes else {}
            cpu_idle = cpu_s(op.pid) - cpu0 - cpu_burst
            rss_idle, peak = rss_kib(op.pid)
            stop.set()

            figures = {
                "count": args.count,
                "replicas_each": args.replicas,
                "create_requests_s": round(t_created, 2),
                "create_to_deployment_p50_s": round(statistics.median(latencies), 3),
                "create_to_deployment_p95_s": round(pct(latencies, 0.95), 3),
                "create_to_deployment_max_s": round(max(latencies), 3),
                "deployments_seen": len(latencies),
                "all_ready_s": round(t_ready, 1),
                "all_settled_s": round(t_settled, 1),
                "api_writes_during_creation": writes_burst,
                "api_writes_per_object": round(writes_burst / args.count, 2),
                "idle_window_s": args.idle,
                "api_writes_per_idle_minute": round((w2 - w1) * 60.0 / args.idle, 2),
                "operator_cpu_s_until_settled": round(cpu_burst, 1),
                "operator_cpu_s_per_idle_minute": round(cpu_idle * 60.0 / args.idle, 1),
                "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                "operator_rss_mib_settled": round(rss_settled / 1024, 1),
                "operator_rss_mib_after_idle": round(rss_idle / 1024, 1),
                "operator_rss_mib_peak": round(peak / 1024, 1),
            }
            if args.probes:
                figures |= scale_probes.probe_figures(cluster, NS, period0, period1, args.probe_interval)
            figures["command"] = " ".join([".venv/bin/python", "bench/operator_scale.py", *sys.argv[1:]])
            print(json.dumps(figures, indent=1))
            if args.json:
                args.json.write_text(json.dumps(figures, indent=1) + "\n")
        finally:
            op.terminate()
            try:
                op.wait(timeout=15)
            except subprocess.TimeoutExpired:
                op.kill()
            log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
