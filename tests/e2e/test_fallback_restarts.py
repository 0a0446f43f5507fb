"""Issue 12 end to end: restarts count as flash evidence only inside the crash-loop window, before Ready.

A pod Ready on flash that then restarts three times (a liveness kill, an Xid, a node reboot: here its
process ends as a crash would, ``Segmentation fault``, exit code 139) is no flash failure: no fallback.
A flash pod that crashes three times at start-up, before it was ever Ready, is: ``FlashVariantCrashLoop``.
The pods run the health stand-in of the server (``tests/health_standin.py``, Ready on flash: this CPU
machine cannot run flash), under devcluster's real control plane, kubelet restarts and operator.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    PYTHON,
    REPOSITORY,
    add_health_standin,
    condition,
    deployed_image,
    events,
    get_json,
    omegavlm,
    ovlm,
    pods,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

FLASH_IMAGE = f"{REPOSITORY}:restarts-flash"
CRASH_IMAGE = f"{REPOSITORY}:restarts-crash-flash"
SDPA_IMAGE = f"{REPOSITORY}:restarts-sdpa"
WINDOW_S = 30  # fallback.crashLoopWindowSeconds (its minimum)
CRASH = "import sys; print('Segmentation fault (core dumped)', file=sys.stderr); sys.exit(139)"


@pytest.fixture(scope="module")
def standin(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    add_health_standin(cluster, (FLASH_IMAGE, SDPA_IMAGE), tmp_path_factory.getbasetemp() / "restarts")
    cluster.add_image(CRASH_IMAGE, [PYTHON, "-c", CRASH], uid=10001)
    return cluster


def manifest(name: str, ns: str, model_dir: Path, flash_image: str) -> dict[str, Any]:
    image = {"repository": REPOSITORY, "flashImage": flash_image, "sdpaImage": SDPA_IMAGE}
    fallback = {"crashLoopRestarts": 3, "crashLoopWindowSeconds": WINDOW_S}
    return omegavlm(name, ns, model_dir, image=image, fallback=fallback)


def server_status(pod: dict[str, Any]) -> dict[str, Any]:
    return next(iter(pod.get("status", {}).get("containerStatuses") or []), {})


def test_a_pod_ready_on_flash_restarted_three_times_is_no_fallback(
    standin: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    cluster, ns, name = standin, namespace, "served"
    with running_operator(cluster, ns, tmp_path / "operator.log"), httpx.Client(trust_env=False) as http:
        cluster.apply(manifest(name, ns, model_dir, FLASH_IMAGE))
        pod = wait_for(
            lambda: next((p for p in pods(cluster, ns) if server_status(p).get("ready")), None), 120, "Ready"
        )
        obj = wait_for(
            lambda: (o := ovlm(cluster, ns, name))["status"].get("phase") == "Ready" and o, 60, "Ready"
        )
        assert obj["status"]["attention"]["active"] == "flash_attention_2"
        time.sleep(WINDOW_S + 2)  # it has served longer than the window
        pod_name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        for n in range(1, 4):
            with contextlib.suppress(httpx.TransportError):  # the process dies answering
                http.post(f"http://{ip}:8000/_crash", timeout=5)
            wait_for(
                lambda n=n: (
                    server_status(p := get_json(cluster, "pod", pod_name, "-n", ns)).get("restartCount", 0)
                    >= n
                    and server_status(p).get("ready")
                ),
                90,
                f"restart {n} and Ready again",
            )
        time.sleep(3 * 2.0)  # three probe intervals of the test operator
        obj = ovlm(cluster, ns, name)
        assert "fallback" not in obj["status"]["attention"], obj["status"]["attention"]
        assert deployed_image(cluster, ns, name) == FLASH_IMAGE
        assert events(cluster, ns, "FlashAttentionFallback") == []
        last = server_status(get_json(cluster, "pod", pod_name, "-n", ns))["lastState"]["terminated"]
        assert last["exitCode"] == 139


def test_three_quick_crashes_before_ready_fall_back(
    standin: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    cluster, ns, name = standin, namespace, "crashy"
    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(manifest(name, ns, model_dir, CRASH_IMAGE))
        obj = wait_for(
            lambda: (
                (o := ovlm(cluster, ns, name)).get("status", {}).get("attention", {}).get("fallback") and o
            ),
            120,
            "fallback recorded",
        )
        fb = obj["status"]["attention"]["fallback"]
        assert fb["reason"] == "FlashVariantCrashLoop" and "restarted" in fb["message"], fb
        wait_for(lambda: deployed_image(cluster, ns, name) == SDPA_IMAGE, 30, "Deployment on sdpa")
        obj = wait_for(
            lambda: (o := ovlm(cluster, ns, name))["status"].get("phase") == "Ready" and o, 120, "Ready"
        )
        degraded = condition(obj, "FlashAttentionDegraded")
        assert degraded is not None and degraded["reason"] == "FlashVariantCrashLoop"
