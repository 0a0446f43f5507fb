"""CLI: ``python -m devcluster {build,up,down,status,demo,logs,kubectl}``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from devcluster import build as build_mod
from devcluster.cluster import Cluster, ClusterError, running_pids
from devcluster.controlplane import Layout
from devcluster.prometheus import DEMO_PROMETHEUS
from devcluster.settings import KUBE_RELEASE, default_state_dir


def cmd_build(args: argparse.Namespace) -> int:
    build_mod.build(keep_tree=args.keep_tree)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    try:
        c = Cluster.start(
            args.state_dir, pod_prefix=42, prometheus=DEMO_PROMETHEUS if args.prometheus else None
        )
    except ClusterError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(f"devcluster ready in {time.monotonic() - t0:.1f} s (Kubernetes v{KUBE_RELEASE.version})")
    print(c.status_text())
    print(f"\nexport KUBECONFIG={c.kubeconfig}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.state_dir).resolve())
    before = running_pids(layout.state)
    if not before:
        print("devcluster: nothing running")
        return 0
    Cluster._stop_dir(layout)
    left = running_pids(layout.state)
    if left:
        print(f"devcluster: still running: {left}", file=sys.stderr)
        return 1
    print(f"devcluster stopped ({len(before)} processes)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    try:
        c = Cluster.attach(state_dir)
    except (ClusterError, OSError, KeyError) as e:
        print(f"devcluster: not running ({e})")
        return 3
    print(f"phase:      {c.info.get('phase')}")
    print(c.status_text())
    print(c.kubectl("get", "nodes", "-L", "nvidia.com/gpu.product", check=False).stdout, end="")
    return 0 if c.info.get("phase") == "ready" else 1


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    from devcluster.demo import run_demo

    for module in args.with_modules:
        importlib.import_module(module)  # registers its steps with devcluster.demo.step
    return run_demo(prometheus=DEMO_PROMETHEUS if args.prometheus else None)


def cmd_logs(args: argparse.Namespace) -> int:
    ns, _, pod = args.pod.rpartition("/")
    c = Cluster.attach(args.state_dir)
    print(c.pod_log(ns or "default", pod, args.container, previous=args.previous), end="")
    return 0


def cmd_kubectl(args: argparse.Namespace) -> int:
    layout = Layout(Path(args.state_dir).resolve())
    os.execvp("kubectl", ["kubectl", f"--kubeconfig={layout.kubeconfig}", *args.args])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    p.add_argument(
        "--state-dir", default=str(default_state_dir()), help="cluster state folder (default: .devcluster)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the control-plane binaries (cached, idempotent)")
    b.add_argument(
        "--keep-tree", action="store_true", help="keep the source tree and Go cache after the build"
    )
    b.set_defaults(fn=cmd_build)
    u = sub.add_parser("up", help="start the cluster; returns when ready")
    u.add_argument(
        "--prometheus",
        action="store_true",
        help="also run Prometheus (Debian's), scraping the operator and the server pods (README: Monitoring)",
    )
    u.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop everything").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="report the cluster's state").set_defaults(fn=cmd_status)
    d = sub.add_parser("demo", help="start the cluster and show it at work (leaves it running)")
    d.add_argument(
        "--with",
        dest="with_modules",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: its @devcluster.demo.step functions run after the built-in steps",
    )
    d.add_argument(
        "--prometheus",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start the cluster with Prometheus (default: on; it has no effect on a running cluster)",
    )
    d.set_defaults(fn=cmd_demo)
    lg = sub.add_parser("logs", help="output of a pod's container: logs NAMESPACE/POD")
    lg.add_argument("pod")
    lg.add_argument("-c", "--container")
    lg.add_argument("-p", "--previous", action="store_true")
    lg.set_defaults(fn=cmd_logs)
    k = sub.add_parser("kubectl", help="kubectl with this cluster's kubeconfig")
    k.add_argument("args", nargs=argparse.REMAINDER)
    k.set_defaults(fn=cmd_kubectl)
    args = p.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `devcluster status | head` ends quietly
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
