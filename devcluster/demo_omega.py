"""The omega-vlm part of ``python -m devcluster demo``: the whole health-driven fallback loop.

Registered after devcluster's own steps (``devcluster.demo.run_demo`` imports this module):

1. install the OmegaVLM CRD from ``crds/`` and show what ``kubectl explain`` knows about it;
2. build a tiny random checkpoint once into ``.devcluster/models/<arch>`` (the server's own tool);
3. start the operator (``python -m omega_operator``) as a background process that outlives the
   demo; it is registered in the cluster's pid registry, so ``python -m devcluster down`` stops it;
4. apply an OmegaVLM with ``attention: auto``: the flash variant starts, cannot load flash-attn on
   this machine, says so on ``/health``; the operator rolls the Deployment back to the sdpa variant;
5. send a real chat completion with an image to the sdpa pod;
6. print how to go on.

With Prometheus (``make demo`` starts it), step 3 registers the operator for scraping and step 4
shows the fallback in Prometheus's series and alerts (:mod:`devcluster.demo_prometheus`).

Every step is also a plain function taking the namespace and settings as arguments, so a test can
run the same loop in its own namespace with a namespaced operator.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from devcluster import demo_prometheus
from devcluster.cluster import Cluster
from devcluster.demo import show, step
from devcluster.demo_operator import (
    no_proxy,
    operator_log,
    register,
    say,
    start_operator,
)
from devcluster.settings import repo_root

NAMESPACE = "omega-demo"
NAME = "captioner"
ARCH = "omega17_vl_exp"  # the tiny random twin of the product's own model family
SERVED_MODEL = "omega-17-vl-exp"
REPOSITORY = "registry.example.com/omega-vlm-server"  # the process kubelet runs omega_server for it
TAG = "v0.1.0"
SERVER_PORT = 8000  # the operator's containerPort for the server
FALLBACK_TIMEOUT_S = 300.0
CRD_NAME = "omegavlms.vlm.omega.io"


# ---------------------------------------------------------------- 1. the CRD


def install_crd(c: Cluster) -> None:
    """``kubectl apply -f crds/`` (idempotent), wait until Established, show the API it adds."""
    crds = repo_root() / "crds"
    # kubectl's client-side schema check does not know the CEL rules (x-kubernetes-validations)
    # that the CRD carries for newer clusters; Kubernetes 1.20 stores them as unknown fields.
    show(c, "apply", "--validate=false", "-f", os.path.relpath(crds))
    c.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    show(c, "api-resources", "--api-group=vlm.omega.io")
    # The apiserver publishes a new CRD's OpenAPI schema a few seconds after Established.
    deadline = time.monotonic() + 30
    while c.kubectl("explain", "omegavlm.spec", check=False).returncode and time.monotonic() < deadline:
        time.sleep(0.5)
    show(c, "explain", "omegavlm.spec.runtime")


# ---------------------------------------------------------------- 2. a tiny checkpoint


def tiny_model(c: Cluster, arch: str = ARCH) -> Path:
    """``python -m omega_server.tiny``: built once into ``<state>/models/<arch>``, reused after."""
    out = c.state_dir / "models" / arch
    if (out / "config.json").exists():
        say(f"reusing {out}")
    else:
        tmp = out.with_name(f".{arch}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        argv = [sys.executable, "-m", "omega_server.tiny", "--arch", arch, "--out", str(tmp)]
        say(f"$ python -m omega_server.tiny --arch {arch} --out {out}")
        t0 = time.monotonic()
        subprocess.run(
            argv, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
        )
        tmp.replace(out)  # whole or not at all: an interrupted build is never reused
        say(f"built in {time.monotonic() - t0:.1f} s")
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    say(f"{out}: {len(files)} files, {size / 1e6:.1f} MB: {', '.join(files)}\n")
    return out


# ---------------------------------------------------------------- 3. the operator


def manifest(namespace: str, model_dir: Path, name: str = NAME) -> dict[str, Any]:
    """The demo's OmegaVLM: attention auto, a tiny checkpoint from file://, small runtime limits."""
    return {
        "apiVersion": "vlm.omega.io/v1alpha1",
        "kind": "OmegaVLM",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": SERVED_MODEL, "uri": f"file://{model_dir}"},
            "replicas": 1,
            "image": {"repository": REPOSITORY, "tag": TAG},
            "attention": "auto",
            "fallback": {"enabled": True, "crashLoopRestarts": 3},
            "runtime": {"maxBatchSize": 2, "maxModelLength": 512, "dtype": "float32"},
            "gpu": {"count": 1},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        },
    }


def _json(c: Cluster, *args: str) -> dict[str, Any] | None:
    out = c.kubectl("get", *args, "-o", "json", check=False)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else None


def _pods(c: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    got = _json(c, "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={name}")
    return list((got or {}).get("items") or [])


def _image(obj: dict[str, Any]) -> str:
    return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])


def _pod_image(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["image"])


def _ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(x.get("type") == "Ready" and x.get("status") == "True" for x in conds)


def _fresh_start(c: Cluster, namespace: str, name: str) -> None:
    """Namespace applied; an OmegaVLM left by an earlier demo deleted with its pods (fallback is sticky)."""
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    if _json(c, "omegavlm", name, "-n", namespace) is None:
        return
    say(f"(an OmegaVLM {namespace}/{name} from an earlier demo: deleting it to show the loop again)")
    show(c, "delete", "omegavlm", name, "-n", namespace, "--wait=true", "--timeout=60s")
    deadline = time.monotonic() + 90
    while _pods(c, namespace, name) and time.monotonic() < deadline:
        time.sleep(0.5)


def _health(http: httpx.Client, ip: str) -> tuple[int, dict[str, Any]] | None:
    try:
        r = http.get(f"http://{ip}:{SERVER_PORT}/health", timeout=1.0)
        return r.status_code, dict(r.json())
    except (httpx.HTTPError, ValueError):
        return None


def apply_and_fall_back(
    c: Cluster, namespace: str, model_dir: Path, name: str = NAME, timeout: float = FALLBACK_TIMEOUT_S
) -> dict[str, Any]:
    """Apply the OmegaVLM, follow the flash variant until the operator has rolled it back to sdpa.

    Returns what was seen: ``flash_health`` (the flash pod's own /health body, or None if it was
    never caught between load and rollback), ``ovlm`` (the final object), timings.
    """
    _fresh_start(c, namespace, name)
    text = yaml.safe_dump(manifest(namespace, model_dir, name), sort_keys=False)
    say(f"$ kubectl apply -f - <<EOF\n{text}EOF")
    say(c.apply(text))
    t0 = time.monotonic()
    seen: dict[str, Any] = {"flash_health": None, "flash_pod": None}
    shown_running = False
    last_line = ""
    with no_proxy() as http:
        while True:
            el = time.monotonic() - t0
            if el > timeout:
                show(c, "get", "omegavlm,deploy,pods", "-n", namespace, "-o", "wide")
                raise TimeoutError(
                    f"no rollback to sdpa after {timeout:.0f} s; operator log: {operator_log(c)}"
                )
            dep = _json(c, "deployment", name, "-n", namespace)
            obj = _json(c, "omegavlm", name, "-n", namespace) or {}
            status = obj.get("status") or {}
            pods = _pods(c, namespace, name)
            for pod in pods:
                ip = (pod.get("status") or {}).get("podIP")
                if (
                    not ip
                    or not _pod_image(pod).endswith("-flash")
                    or pod["metadata"].get("deletionTimestamp")
                ):
                    continue
                got = _health(http, ip)
                # Keep the body that tells the story: a loaded flash pod that fell back in-process.
                if got and (got[1].get("flash_attn") or {}).get("error"):
                    if seen["flash_health"] is None:
                        seen["since_flash_error_s"] = el
                    seen["flash_health"], seen["flash_pod"] = got, pod["metadata"]["name"]
            image = _image(dep) if dep else "-"
            if image.endswith("-sdpa") and "sdpa_image_s" not in seen:
                seen["sdpa_image_s"] = el
            phases = ", ".join(
                f"{p['metadata']['name']} {_pod_image(p).rsplit(':', 1)[-1]} "
                f"{'Terminating' if p['metadata'].get('deletionTimestamp') else p['status'].get('phase')}"
                f"{' Ready' if _ready(p) else ''}"
                for p in pods
            )
            att = (status.get("attention") or {}).get("active") or "-"
            line = f"image {image.rsplit(':', 1)[-1]}; phase {status.get('phase', '-')}; attention {att}; pods: {phases or '-'}"
            if line != last_line:
                say(f"  [{el:5.1f} s] {line}")
                last_line = line
            if not shown_running and any(
                _pod_image(p).endswith("-flash") and p["status"].get("phase") == "Running" for p in pods
            ):
                shown_running = True
                say("")
                show(c, "get", "ovlm", "-n", namespace)
                show(c, "get", "deploy,pods", "-n", namespace, "-o", "wide")
            if (
                image.endswith("-sdpa")
                and status.get("phase") == "Ready"
                and att == "sdpa"
                and any(_ready(p) and _pod_image(p).endswith("-sdpa") for p in pods)
            ):
                seen["ovlm"], seen["ready_s"] = obj, el
                first = seen.get("since_flash_error_s")
                say(
                    (
                        f"\nflash-attn failure first seen on the flash pod's /health at {first:.1f} s; "
                        if first
                        else "\n"
                    )
                    + f"Deployment on the sdpa image at {seen['sdpa_image_s']:.1f} s; "
                    + f"Ready on sdpa at {el:.1f} s (after the apply).\n"
                )
                return seen
            time.sleep(0.3)


def show_fallback(c: Cluster, namespace: str, seen: dict[str, Any], name: str = NAME) -> None:
    """What a user looks at after the rollback: the flash pod's /health, get, describe, jsonpath."""
    if seen.get("flash_health"):
        code, body = seen["flash_health"]
        say(f"/health of the flash pod {seen['flash_pod']} (HTTP {code}), fetched while it ran:")
        say(json.dumps(body, indent=2) + "\n")
    else:
        fb = ((seen.get("ovlm") or {}).get("status") or {}).get("attention", {}).get("fallback") or {}
        say(
            f"(the flash pod was gone before its /health was fetched; the operator recorded: {fb.get('message')})\n"
        )
    show(c, "get", "ovlm", "-n", namespace)
    show(c, "get", "deploy,rs,pods", "-n", namespace, "-o", "wide")
    show(c, "describe", "ovlm", name, "-n", namespace)
    show(c, "get", "ovlm", name, "-n", namespace, "-o", "jsonpath={.status.attention}")
    print(flush=True)


def show_operator_metrics(port: int) -> None:
    """The operator's fallback and probe counters from its /metrics."""
    say(f"$ curl -s localhost:{port}/metrics | grep -E 'omega_operator_(fallbacks_total|omegavlm_info)'")
    try:
        with no_proxy() as http:
            text = http.get(f"http://127.0.0.1:{port}/metrics").text
    except httpx.HTTPError as e:
        say(f"(metrics not reachable: {e})\n")
        return
    lines = [
        ln
        for ln in text.splitlines()
        if ln.startswith(("omega_operator_fallbacks_total{", "omega_operator_omegavlm_info{"))
    ]
    say("\n".join(lines) + "\n")


# ---------------------------------------------------------------- 5. a chat with an image


def _png() -> str:
    """A small picture as a data URL (a red square on blue)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (30, 60, 200))
    ImageDraw.Draw(img).rectangle((16, 16, 48, 48), fill=(220, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(c: Cluster, namespace: str, name: str = NAME) -> dict[str, Any]:
    """POST /v1/chat/completions with an image to the Ready sdpa pod; print and return the answer."""
    pod = next(p for p in _pods(c, namespace, name) if _ready(p) and _pod_image(p).endswith("-sdpa"))
    ip = pod["status"]["podIP"]
    base = f"http://{ip}:{SERVER_PORT}"
    with no_proxy() as http:
        h = http.get(f"{base}/health").json()
        say(
            f"$ curl -s {base}/health | jq '{{attn, attn_requested, ready}}'\n"
            + json.dumps({k: h.get(k) for k in ("attn", "attn_requested", "ready")})
            + "\n"
        )
        image = _png()
        body = {
            "model": SERVED_MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": image}},
                        {"type": "text", "text": "What is in this picture?"},
                    ],
                }
            ],
            "max_tokens": 16,
        }
        shown = json.dumps(body).replace(image, "data:image/png;base64,...")
        say(f"$ curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' -d '{shown}'")
        t0 = time.monotonic()
        r = http.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        took = time.monotonic() - t0
    r.raise_for_status()
    answer = dict(r.json())
    say(json.dumps(answer, indent=2, ensure_ascii=False))
    say(
        f"HTTP {r.status_code} in {took:.2f} s from pod {pod['metadata']['name']} ({ip}); random tiny "
        "weights, so the words are noise: the point is a real model forward pass with an image, on sdpa.\n"
    )
    return answer


# ---------------------------------------------------------------- 6. how to go on


def next_steps(c: Cluster, namespace: str, name: str = NAME) -> str:
    """How to keep exploring and how to stop everything."""
    py = os.path.relpath(sys.executable) if sys.executable.startswith(str(repo_root())) else sys.executable
    ns = f"-n {namespace}"
    rows = [
        (f"export KUBECONFIG={c.kubeconfig}", ""),
        (f"kubectl get ovlm {ns} -w", "watch Ready / Attention / Replicas / Variant / Reason"),
        (f"kubectl describe ovlm {name} {ns}", "conditions and Events"),
        (f'kubectl annotate ovlm {name} {ns} vlm.omega.io/retry-flash="$(date +%s)" --overwrite', ""),
        ("", "^ try flash again: it fails here too, and is rolled back once more"),
        (
            f'kubectl patch ovlm {name} {ns} --type=merge -p \'{{"spec": {{"replicas": 2}}}}\'',
            "",
        ),
        ("", "^ scale out: the new pod starts on sdpa (the fallback is sticky)"),
        (f"tail -f {operator_log(c)}", "the operator's log"),
        (f"{py} -m devcluster logs {namespace}/<pod>", "a server pod's output"),
        (f"{py} -m devcluster down", "stop everything, the operator included"),
    ]
    width = max(len(cmd) for cmd, note in rows if note and cmd)
    lines = [
        f"  {cmd:<{width}}  # {note}" if note and cmd else f"  {cmd}" if cmd else f"  {'':<{width}}  # {note}"
        for cmd, note in rows
    ]
    return "The cluster and the operator keep running.\n" + "\n".join(lines)


# ---------------------------------------------------------------- the demo steps

_state: dict[str, Any] = {}


@step("omega-vlm 1/6: install the OmegaVLM CRD (kubectl apply -f crds/)")
def _step_crd(c: Cluster) -> None:
    install_crd(c)


@step(f"omega-vlm 2/6: a tiny random checkpoint ({ARCH}), built once")
def _step_model(c: Cluster) -> None:
    _state["model"] = tiny_model(c)


@step("omega-vlm 3/6: the operator (python -m omega_operator), in the background")
def _step_operator(c: Cluster) -> None:
    _state["pid"], _state["metrics_port"] = start_operator(c)


@step(
    "omega-vlm 4/6: an OmegaVLM with attention: auto; flash-attn cannot load here, the operator rolls back to sdpa"
)
def _step_fallback(c: Cluster) -> None:
    demo_prometheus.announce(c)
    seen = apply_and_fall_back(c, NAMESPACE, _state["model"])
    show_fallback(c, NAMESPACE, seen)
    show_operator_metrics(_state["metrics_port"])
    demo_prometheus.show_fallback(c, NAMESPACE, NAME)


@step("omega-vlm 5/6: a chat completion with an image, served by the sdpa pod")
def _step_chat(c: Cluster) -> None:
    chat(c, NAMESPACE)


@step("omega-vlm 6/6: go on from here")
def _step_next(c: Cluster) -> None:
    register(c, _state["pid"])  # still registered (the pid file is shared with the supervisor)
    say(next_steps(c, NAMESPACE))
