"""Issue 5 end to end: a flash variant that crash-loops at start-up, naming flash-attn in its
termination message, is rolled back to sdpa with reason FlashVariantCrashLoop.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    PYTHON,
    REPOSITORY,
    SDPA_IMAGE,
    all_ready_on,
    condition,
    deployed_image,
    events,
    omegavlm,
    ovlm,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

CRASH_IMAGE = f"{REPOSITORY}:crashloop-flash"
CRASH_LINE = (
    "fatal: flash-attn: ImportError: flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so: undefined symbol"
)


def test_crash_looping_flash_variant_rolls_back_with_reason_crash_loop(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    # A flash image whose server dies at start-up naming flash-attn (as a broken wheel would).
    script = f"import sys; print('loading model'); print({CRASH_LINE!r}, file=sys.stderr); sys.exit(1)"
    cluster.add_image(CRASH_IMAGE, [PYTHON, "-c", script])
    ns, name = namespace, "crashy"
    image = {"repository": REPOSITORY, "flashImage": CRASH_IMAGE, "sdpaImage": SDPA_IMAGE}
    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(omegavlm(name, ns, model_dir, attention="auto", image=image))
        obj = wait_for(
            lambda: (
                (o := ovlm(cluster, ns, name)).get("status", {}).get("attention", {}).get("fallback") and o
            ),
            180,
            "fallback recorded",
        )
        fb = obj["status"]["attention"]["fallback"]
        assert fb["reason"] == "FlashVariantCrashLoop"
        assert fb["fromImage"] == CRASH_IMAGE
        assert "flash-attn" in fb["message"], fb["message"]
        wait_for(lambda: deployed_image(cluster, ns, name) == SDPA_IMAGE, 30, "Deployment on sdpa")
        wait_for(lambda: all_ready_on(cluster, ns, SDPA_IMAGE, 1), 240, "sdpa pod Ready")
        obj = wait_for(
            lambda: (o := ovlm(cluster, ns, name))["status"].get("phase") == "Ready" and o, 60, "Ready"
        )
        degraded = condition(obj, "FlashAttentionDegraded")
        assert degraded is not None and degraded["status"] == "True"
        assert degraded["reason"] == "FlashVariantCrashLoop"
        assert len(events(cluster, ns, "FlashAttentionFallback")) == 1
