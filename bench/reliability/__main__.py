"""`python -m bench.reliability fuzz --requests 5000`: run an experiment, print its figures, write JSON."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.reliability.fuzz import FuzzReport, run_fuzz
from bench.reliability.target import API_KEY, TinyServer

#: The soak's server: a small batch and queue, so 2x its capacity overflows the queue quickly.
SOAK_ENV = {"MAX_BATCH_SIZE": "4", "MAX_QUEUE": "8"}


def fuzz(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        server = TinyServer(Path(tmp))
        try:
            server.wait_ready()

            def progress(report: FuzzReport) -> None:
                print(f"  {report.sent} sent, {len(report.violations)} violations", flush=True)

            report = run_fuzz(
                server.url, requests=args.requests, api_key=API_KEY, seed_value=args.seed, progress=progress
            )
            alive = server.alive()
        finally:
            log = server.stop()
    result = {
        "experiment": "fuzz",
        "what": "generated /v1/chat/completions requests (hypothesis): wrong types, nasty unicode, huge numbers, "
        "deep nesting, truncated/oversized bodies, malformed images",
        "expected": "only 200 or 4xx with an OpenAI-style body; no 5xx, hang or dropped connection; "
        "/health 200 and a valid request 200 at the end; the process alive",
        "seed": args.seed,
        "date": time.strftime("%Y-%m-%d"),
        "process_alive": alive,
        **report.as_dict(),
    }
    result["ok"] = bool(result["ok"]) and alive
    print(json.dumps({k: v for k, v in result.items() if k != "violations"}, indent=1))
    for v in report.violations[:10]:
        print("VIOLATION", v)
    if not alive:
        print(log[-4000:])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


def manifests(args: argparse.Namespace) -> int:
    import os

    from kubernetes import client

    from bench.reliability.manifest_cases import BASE_SPEC, sample_specs
    from bench.reliability.manifests import ManifestReport, apply_batch
    from devcluster import TEST_KUBELET, Cluster
    from tests.e2e.fallback_support import OperatorProcess, install_crd, make_namespace

    report = ManifestReport()
    start = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster.start(Path(tmp) / "cluster", kubelet=TEST_KUBELET, owner_pid=os.getpid()) as cluster,
    ):
        install_crd(cluster)
        for variant in ("flash", "sdpa"):
            cluster.add_image(
                f"{BASE_SPEC['image']['repository']}:v1-{variant}", ["sleep", "3600"], uid=10001
            )
        ns = make_namespace(cluster, "badm")
        op = OperatorProcess(cluster, ns, Path(tmp) / "operator.log").start()
        try:
            api = cluster.api_client()
            custom, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
            specs = sample_specs(args.count, seed_value=args.seed)
            for at in range(0, len(specs), args.batch):
                apply_batch(custom, apps, ns, specs[at : at + args.batch], report, start_index=at)
                print(f"  {report.applied} applied, {len(report.violations)} violations", flush=True)
            alive = op.proc is not None and op.proc.poll() is None
        finally:
            op.stop()
    report.seconds = time.monotonic() - start
    result = {
        "experiment": "bad_manifests",
        "what": "randomly mutated OmegaVLM specs (type changes, missing/extra fields, extreme values) "
        "created on devcluster's API server with the operator running",
        "expected": "refused by the API server naming a spec field, or Ready=False InvalidSpec naming the "
        "field with no Deployment, or (a mutation that stayed valid) reconciled; the operator alive",
        "seed": args.seed,
        "date": time.strftime("%Y-%m-%d"),
        "operator_alive": alive,
        **report.as_dict(),
    }
    result["ok"] = alive and not report.violations
    print(json.dumps({k: v for k, v in result.items() if k != "violations"}, indent=1))
    for v in report.violations[:10]:
        print("VIOLATION", v)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


def soak(args: argparse.Namespace) -> int:
    import asyncio

    from bench.reliability.soak import soak as run_soak

    with tempfile.TemporaryDirectory() as tmp:
        server = TinyServer(Path(tmp), env=SOAK_ENV)
        try:
            server.wait_ready()
            report = asyncio.run(
                run_soak(
                    server.url, server.proc.pid, api_key=API_KEY, seconds=args.seconds, warmup_s=args.warmup
                )
            )
            alive = server.alive()
        finally:
            server.stop()
    result = {
        "experiment": "soak",
        "what": f"{args.seconds:.0f} s of Poisson arrivals at 2x the measured capacity (streamed requests of 16 "
        "tokens), 10% of clients disconnecting after the first chunk, on the tiny model",
        "expected": "only 200 and 429 (with Retry-After); RSS growth < 5% after the warm-up; queue/running "
        "gauges 0 after the load; p99 latency of admitted requests reported",
        "server_env": SOAK_ENV,
        "date": time.strftime("%Y-%m-%d"),
        "process_alive": alive,
        **report.as_dict(),
    }
    result["ok"] = alive and not result["violations"]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


def _faults(args: argparse.Namespace, plan: Any, what: str, expected: str, calibrate: bool = False) -> int:
    """Run ``plan(window_s)`` (a list of faults.run_iteration keyword arguments) on a devcluster of its
    own; ``calibrate``: first one run without a fault measures the window (then passed to ``plan``)."""
    import os

    from bench.reliability.faults import run_iteration
    from devcluster import TEST_KUBELET, Cluster
    from tests.e2e.fallback_support import install_crd, tiny_checkpoint

    runs = []
    start = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster.start(Path(tmp) / "cluster", kubelet=TEST_KUBELET, owner_pid=os.getpid()) as cluster,
    ):
        install_crd(cluster)
        model_dir = tiny_checkpoint(Path(tmp) / "tiny")
        window = None
        if calibrate:
            calib = run_iteration(cluster, model_dir, Path(tmp), 99, fault="none", phase="window_open")
            window = calib.ready_after_fault_s
            print(f"  calibration: first failing /health to Ready on sdpa {window:.1f} s, {calib.violations}")
        plan = plan(window)
        for i, kwargs in enumerate(plan):
            run = run_iteration(cluster, model_dir, Path(tmp), i, **kwargs)
            runs.append(run.as_dict())
            print(
                f"  {i}: {run.fault} ({run.attention}) {run.fault_after_s:.1f} s into the window "
                f"({run.phase_at_fault}), Ready {run.ready_after_fault_s:.1f} s later, "
                f"image writes {len(run.image_writes)}, violations {run.violations}",
                flush=True,
            )
    phases: dict[str, int] = {}
    for r in runs:
        key = f"{r['fault']}/{r['attention']}/{r['phase_at_fault']}"
        phases[key] = phases.get(key, 0) + 1
    ready = sorted(r["ready_after_fault_s"] for r in runs if not r["violations"])
    result = {
        "experiment": args.cmd.replace("-", "_"),
        "what": what,
        "expected": expected,
        "iterations": len(plan),
        "seed": getattr(args, "seed", None),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(time.monotonic() - start, 1),
        "fault_at": phases,
        "events_lost": sum(1 for r in runs if r["attention"] == "auto" and r["events"] == 0),
        "ready_after_fault_s_max": round(max(ready), 1) if ready else None,
        "failed_iterations": sum(1 for r in runs if r["violations"]),
        "window_without_fault_s": round(window, 1) if window is not None else None,
        "runs": runs,
    }
    result["ok"] = result["failed_iterations"] == 0
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


def operator_kill(args: argparse.Namespace) -> int:
    import random

    rng = random.Random(args.seed)

    def plan(window_s: float) -> list[dict[str, Any]]:
        top = window_s if args.measure_window else args.max_delay
        return [{"fault": "operator", "delay_s": rng.uniform(0.0, top)} for _ in range(args.iterations)]

    return _faults(
        args,
        plan,
        "OmegaVLM attention auto on devcluster (flash cannot load on CPU); the operator SIGKILLed at a random "
        + (
            "moment (uniform over the window measured by a first run without a fault)"
            if args.measure_window
            else f"moment (uniform 0-{args.max_delay:.0f} s)"
        )
        + " after the flash pod's first failing /health, a new operator process started at once",
        "each time exactly one Deployment image write to sdpa (watch), revision 2, one fallback record, "
        "status Ready/sdpa/FlashAttentionDegraded, at most one FlashAttentionFallback Event",
        calibrate=args.measure_window,
    )


def control_plane(args: argparse.Namespace) -> int:
    from bench.reliability.faults import DOWN_S

    plan: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for fault in ("kube-apiserver", "etcd"):
            plan.append({"fault": fault, "attention": "sdpa", "phase": "window_open"})
            plan.append({"fault": fault, "attention": "auto", "phase": "window_open"})
            plan.append({"fault": fault, "attention": "auto", "phase": "moved"})
    return _faults(
        args,
        lambda _window: plan,
        f"the API server, and separately etcd, stopped for {DOWN_S:.0f} s and started again by devcluster: "
        "right after an OmegaVLM (attention sdpa) is created (mid reconcile), at the flash pod's first failing "
        "/health and once the Deployment moved to sdpa (mid rollback); the operator is not restarted",
        "the same operator process converges to Ready on sdpa; one Deployment image write per variant, one "
        "fallback record for a rollback, status consistent",
    )


def node_loss(args: argparse.Namespace) -> int:
    import os

    from bench.reliability.node_loss import TIMINGS, run_node_loss
    from devcluster import TEST_KUBELET, Cluster
    from tests.e2e.fallback_support import install_crd, tiny_checkpoint

    runs = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        Cluster.start(
            Path(tmp) / "cluster", kubelet=TEST_KUBELET, owner_pid=os.getpid(), node_loss=TIMINGS
        ) as cluster,
    ):
        install_crd(cluster)
        model_dir = tiny_checkpoint(Path(tmp) / "tiny")
        for i in range(args.iterations):
            run = run_node_loss(cluster, model_dir, Path(tmp))
            runs.append(run.as_dict())
            print(f"  {i}: {run.as_dict()}", flush=True)
            time.sleep(2 * TIMINGS["grace_s"])  # the node Ready again before the next loss
    done = [r for r in runs if not r["violations"]]
    result = {
        "experiment": "node_loss",
        "what": "the heartbeats (Lease, node status) of the node running an OmegaVLM's only pod (attention "
        "sdpa, tiny model) stop; devcluster started with shortened timeouts: node-monitor grace period "
        f"{TIMINGS['grace_s']:.0f} s (Kubernetes: 40 s), default not-ready/unreachable toleration "
        f"{TIMINGS['toleration_s']:.0f} s (Kubernetes: 300 s), heartbeats every {TEST_KUBELET.lease_renew_s:.0f} s",
        "expected": "the node NotReady, the pod evicted and a new one Ready on another Hopper node, the "
        "OmegaVLM Ready again, the operator alive",
        "iterations": args.iterations,
        "date": time.strftime("%Y-%m-%d"),
        "timings": TIMINGS,
        "omegavlm_ready_again_s_max": max((r["omegavlm_ready_s"] for r in done), default=None),
        "failed_iterations": len(runs) - len(done),
        "runs": runs,
    }
    result["ok"] = not result["failed_iterations"]
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("fuzz", help="fuzz /v1/chat/completions on the tiny model")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the result JSON here (bench/results/reliability-fuzz-<date>.json)")
    p.set_defaults(func=fuzz)
    p = sub.add_parser("soak", help="overload soak on the tiny model")
    p.add_argument("--seconds", type=float, default=1200.0)
    p.add_argument("--warmup", type=float, default=120.0, help="memory growth is counted from here")
    p.add_argument("--out", help="write the result JSON here (bench/results/reliability-soak-<date>.json)")
    p.set_defaults(func=soak)
    p = sub.add_parser("manifests", help="mutated OmegaVLM manifests on devcluster with the operator")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", help="write the result JSON here (bench/results/reliability-manifests-<date>.json)"
    )
    p.set_defaults(func=manifests)
    p = sub.add_parser(
        "operator-kill", help="SIGKILL the operator during a rollback on devcluster, restart it"
    )
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument(
        "--max-delay", type=float, default=20.0, help="kill up to this long after the window opens"
    )
    p.add_argument(
        "--measure-window",
        action="store_true",
        help="instead of --max-delay: a first run without a kill measures the window to draw from",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", help="write the result JSON here (bench/results/reliability-operator-kill-<date>.json)"
    )
    p.set_defaults(func=operator_kill)
    p = sub.add_parser("control-plane", help="restart the API server and etcd mid reconcile and mid rollback")
    p.add_argument("--repeat", type=int, default=3, help="times each of the 6 cases runs")
    p.add_argument(
        "--out", help="write the result JSON here (bench/results/reliability-control-plane-<date>.json)"
    )
    p.set_defaults(func=control_plane)
    p = sub.add_parser(
        "node-loss", help="stop a node's heartbeats; its pod moves, the OmegaVLM is Ready again"
    )
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument(
        "--out", help="write the result JSON here (bench/results/reliability-node-loss-<date>.json)"
    )
    p.set_defaults(func=node_loss)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
