"""A sticky device error in the engine, end to end on devcluster (issue 17, engine faults).

Real parts: the control plane, the operator, the process kubelet with its liveness probe, the
inference server with one injected fault (``fatal_server.py``: a CUDA-style illegal memory access in a
decode step). Expected: every open stream is answered (an error event, no hang), ``/live`` turns 503,
the kubelet restarts the container, and the pod serves again.
"""

from __future__ import annotations

import concurrent.futures
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import PYTHON, REPOSITORY, omegavlm, pods, running_operator, wait_for

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

FATAL_IMAGE = f"{REPOSITORY}:fatal-in-decode"
SERVER = Path(__file__).with_name("fatal_server.py")


def _stream(url: str) -> str:
    """One streamed chat request: how it ended (``done``, ``error`` event, or the client's error)."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Count to a hundred."}],
        "max_tokens": 200,
        "stream": True,
    }
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            if r.status_code != 200:
                return f"status {r.status_code}"
            ended = "no [DONE]"
            for line in r.iter_lines():
                if line.startswith("data: ") and '"error"' in line:
                    ended = "error"
                if line == "data: [DONE]":
                    return ended if ended == "error" else "done"
            return ended
    except httpx.HTTPError as exc:
        return f"client {type(exc).__name__}"


def _server_pod(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    for pod in pods(cluster, ns):
        statuses = pod.get("status", {}).get("containerStatuses") or []
        if statuses and statuses[0].get("ready"):
            return pod
    return None


def test_a_sticky_device_error_answers_every_stream_and_the_pod_restarts_and_serves(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    shared = Path(tempfile.mkdtemp(prefix="omega-fatal-"))
    shared.chmod(0o777)  # the container runs as the image's user (10001) and writes the marker here
    marker = shared / "fired"
    cluster.add_image(
        FATAL_IMAGE,
        [PYTHON, str(SERVER)],
        env={"FATAL_MARKER": str(marker), "FATAL_AFTER_STEPS": "30"},
        uid=10001,
    )
    image = {"repository": REPOSITORY, "flashImage": FATAL_IMAGE, "sdpaImage": FATAL_IMAGE}
    with running_operator(cluster, namespace, tmp_path / "operator.log"):
        cluster.apply(omegavlm("fatal", namespace, model_dir, attention="sdpa", image=image))
        pod = wait_for(lambda: _server_pod(cluster, namespace), 300, "a Ready server pod")
        url = f"http://{pod['status']['podIP']}:8000"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            ends = list(pool.map(_stream, [url] * 4))
        assert marker.exists(), "the fault did not fire"
        # every stream answered, none hung: finished before the fault, an error event, or (arrived after
        # the engine died) a 503
        assert all(e in ("error", "done", "status 503") for e in ends), ends
        assert "error" in ends
        live = httpx.get(f"{url}/live", timeout=5)
        assert live.status_code == 503, live.text
        faulted = time.monotonic()

        def restarted_and_ready() -> dict[str, Any] | None:
            p = _server_pod(cluster, namespace)
            if p and p["status"]["containerStatuses"][0].get("restartCount", 0) >= 1:
                return p
            return None

        pod = wait_for(restarted_and_ready, 300, "the container restarted and Ready")
        recovered = time.monotonic() - faulted
        url = f"http://{pod['status']['podIP']}:8000"
        assert _stream(url) == "done"
        print(json.dumps({"streams": ends, "seconds_to_serving_again": round(recovered, 1)}))
