"""Measure the flash -> sdpa fallback on devcluster, over repeated runs.

For each run an OmegaVLM (attention auto, tiny checkpoint) is applied; the flash variant cannot load
flash-attn on this machine, says so on /health, and the operator rolls it back. Measured per run:

* detect -> patch: from the first failing /health of the flash pod (this script polls the pod's
  /health itself every 50 ms) to the Deployment's switch to the sdpa image (polled every 50 ms).
  Target: at most one probe interval plus 2 s.
* apply -> sdpa Ready: from ``kubectl apply`` to every replica Ready on the sdpa image.
* apply -> OmegaVLM Ready: to ``status.phase == Ready`` with ``status.attention.active == sdpa``.

Usage (from the repo root, after ``make setup build-cluster``)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/fallback_latency.py --runs 5 [--probe-interval 10]

Real parts only: a devcluster control plane (started in a temp folder, or ``--state-dir`` of a
running one), the operator as a process, the inference server as processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devcluster import TEST_KUBELET, Cluster  # noqa: E402

PYTHON = (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)
REPOSITORY = "registry.example.com/omega-vlm-server"
TAG = "v0.1.0"
SDPA = f"{REPOSITORY}:{TAG}-sdpa"
NS = "bench-fallback"


class Api:
    """Raw GETs through the kubernetes client (fast enough to poll every 50 ms, unlike kubectl)."""

    def __init__(self, cluster: Cluster) -> None:
        self.client = cluster.api_client()

    def get(self, path: str, query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        method, url, headers, _, _ = self.client.param_serialize(
            "GET",
            path,
            query_params=query or [],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        resp = self.client.call_api(method, url, header_params=headers, _request_timeout=5)
        resp.read()
        if resp.status != 200:
            return {}
        return dict(json.loads(resp.data))

    def pods(self, name: str) -> list[dict[str, Any]]:
        query = [("labelSelector", f"app.kubernetes.io/instance={name}")]
        return list(self.get(f"/api/v1/namespaces/{NS}/pods", query).get("items") or [])

    def deployment(self, name: str) -> dict[str, Any]:
        return self.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{name}")

    def omegavlm(self, name: str) -> dict[str, Any]:
        return self.get(f"/apis/vlm.omega.io/v1alpha1/namespaces/{NS}/omegavlms/{name}")


def flash_failed(ip: str, port: int = 8000) -> bool:
    """The pod's own /health says flash was asked for and did not load (DESIGN.md 3.2)."""
    try:
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/health", timeout=0.5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 503 while loading: the body still comes
            body = json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return False
    fa = body.get("flash_attn") or {}
    return (
        body.get("attn_requested") in ("auto", "flash_attention_2")
        and not fa.get("loaded")
        and bool(fa.get("error"))
    )


def manifest(name: str, model_dir: Path, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "vlm.omega.io/v1alpha1",
        "kind": "OmegaVLM",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"name": "tiny", "uri": f"file://{model_dir}"},
            "replicas": replicas,
            "image": {"repository": REPOSITORY, "tag": TAG},
            "attention": "auto",
            "runtime": {"maxBatchSize": 2, "maxModelLength": 512, "dtype": "float32"},
        },
    }


def one_run(
    cluster: Cluster, api: Api, name: str, model_dir: Path, replicas: int, timeout: float
) -> dict[str, Any]:
    cluster.apply(manifest(name, model_dir, replicas))
    t_apply = time.monotonic()
    t_fail = t_patch = t_pods = t_ready = None
    deadline = t_apply + timeout
    while time.monotonic() < deadline and t_ready is None:
        now = time.monotonic()
        pods = api.pods(name)
        if t_fail is None:
            for p in pods:
                ip = (p.get("status") or {}).get("podIP")
                if ip and p["spec"]["containers"][0]["image"] != SDPA and flash_failed(ip):
                    t_fail = now
                    break
        if t_patch is None:
            tpl = (api.deployment(name).get("spec") or {}).get("template", {})
            if [c["image"] for c in tpl.get("spec", {}).get("containers", [])] == [SDPA]:
                t_patch = now
        if t_patch is not None and t_pods is None:
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            if len(live) == replicas and all(
                p["spec"]["containers"][0]["image"] == SDPA
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions") or []
                )
                for p in live
            ):
                t_pods = now
        if t_pods is not None:
            st = api.omegavlm(name).get("status") or {}
            if st.get("phase") == "Ready" and (st.get("attention") or {}).get("active") == "sdpa":
                t_ready = now
        time.sleep(0.05)
    if t_ready is None or t_fail is None or t_patch is None or t_pods is None:
        raise RuntimeError(
            f"run {name} did not finish in {timeout:.0f}s: fail={t_fail} patch={t_patch} pods={t_pods}"
        )
    fb = (api.omegavlm(name).get("status") or {}).get("attention", {}).get("fallback", {})
    return {
        "detect_to_patch_s": round(t_patch - t_fail, 2),
        "apply_to_first_failing_health_s": round(t_fail - t_apply, 2),
        "apply_to_patch_s": round(t_patch - t_apply, 2),
        "apply_to_sdpa_pods_ready_s": round(t_pods - t_apply, 2),
        "apply_to_omegavlm_ready_s": round(t_ready - t_apply, 2),
        "reason": fb.get("reason", ""),
    }


def summary(values: list[float]) -> str:
    return f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--probe-interval", type=float, default=10.0, help="operator probe interval (s)")
    ap.add_argument("--state-dir", help="attach to a running devcluster instead of starting one")
    ap.add_argument("--timeout", type=float, default=300.0, help="per run (s)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fallback-bench-"))
    cluster = (
        Cluster.attach(args.state_dir)
        if args.state_dir
        else Cluster.start(work / "cluster", kubelet=TEST_KUBELET, owner_pid=os.getpid())
    )
    operator: subprocess.Popen[bytes] | None = None
    try:
        from omega_operator import crdgen

        cluster.kubectl("apply", "--validate=false", "-f", "-", input=crdgen.render())
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/omegavlms.vlm.omega.io")
        cluster.kubectl("create", "namespace", NS, check=False)
        model_dir = work / "tiny"
        subprocess.run(
            [PYTHON, "-m", "omega_server.tiny", "--arch", "qwen2_5_vl", "--out", str(model_dir)],
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMEGA_OPERATOR_")}
        env.update(
            KUBECONFIG=str(cluster.kubeconfig),
            OMEGA_OPERATOR_NAMESPACES=NS,
            OMEGA_OPERATOR_PROBE_INTERVAL=str(args.probe_interval),
            OMEGA_OPERATOR_METRICS_PORT="0",
            OMEGA_OPERATOR_LIVENESS_PORT="0",
            OMP_NUM_THREADS="1",
        )
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            [PYTHON, "-m", "omega_operator"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        api = Api(cluster)
        results = []
        for i in range(args.runs):
            name = f"lat-{i}"
            r = one_run(cluster, api, name, model_dir, args.replicas, args.timeout)
            results.append(r)
            print(f"run {i}: " + "  ".join(f"{k}={v}" for k, v in r.items()), flush=True)
            cluster.kubectl(
                "delete", "omegavlm", name, "-n", NS, "--wait=true", "--timeout=120s", check=False
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and api.get(f"/api/v1/namespaces/{NS}/pods").get("items"):
                time.sleep(0.5)
        print(f"\nprobe interval {args.probe_interval:g}s, {args.runs} runs, {args.replicas} replica(s):")
        for key in ("detect_to_patch_s", "apply_to_sdpa_pods_ready_s", "apply_to_omegavlm_ready_s"):
            print(f"  {key:<28} {summary([float(r[key]) for r in results])}")
        if args.out:
            args.out.write_text(
                json.dumps({"probe_interval_s": args.probe_interval, "runs": results}, indent=1)
            )
        return 0
    finally:
        if operator is not None and operator.poll() is None:
            operator.send_signal(signal.SIGTERM)
            try:
                operator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                operator.kill()
        if not args.state_dir:
            cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
