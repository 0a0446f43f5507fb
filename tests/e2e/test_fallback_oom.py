"""Issue 12 end to end: an out-of-memory during the flash warm-up is not a flash failure.

Real parts: the devcluster control plane, the operator process, the inference server (its real
loader and warm-up step, with an injected ``torch.OutOfMemoryError`` at that step on the flash model:
tests/e2e/flash_oom_server.py). The server switches to sdpa in process and reports
``flash_attn.error_kind: out_of_memory``; the operator keeps the flash variant (no fallback, no
Event) and says ``OutOfMemory`` in the Ready condition.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    PYTHON,
    REPOSITORY,
    SDPA_IMAGE,
    condition,
    deployed_image,
    events,
    omegavlm,
    ovlm,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

OOM_IMAGE = f"{REPOSITORY}:flash-oom-at-warm-up"
SERVER = Path(__file__).with_name("flash_oom_server.py")


def test_out_of_memory_at_the_flash_warm_up_is_no_fallback_and_says_out_of_memory(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    cluster.add_image(OOM_IMAGE, [PYTHON, str(SERVER)])
    ns, name = namespace, "oomy"
    image = {"repository": REPOSITORY, "flashImage": OOM_IMAGE, "sdpaImage": SDPA_IMAGE}
    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(omegavlm(name, ns, model_dir, attention="auto", image=image))

        def ready_reason() -> dict | None:
            obj = ovlm(cluster, ns, name)
            ready = condition(obj, "Ready")
            return obj if ready and ready.get("status") == "True" else None

        obj = wait_for(ready_reason, 300, "Ready=True")
        ready = condition(obj, "Ready")
        assert ready is not None and ready["reason"] == "OutOfMemory", ready
        assert "out of GPU memory" in ready["message"] and "injected at the flash warm-up" in ready["message"]
        attention = obj["status"]["attention"]
        assert attention.get("active") == "sdpa"  # serving, on sdpa in process
        assert not attention.get("fallback"), attention
        degraded = condition(obj, "FlashAttentionDegraded")
        assert degraded is not None and degraded["status"] == "False", degraded

        # It stays so: a few probe rounds later, still the flash variant, no fallback, no Event.
        time.sleep(8)
        assert deployed_image(cluster, ns, name) == OOM_IMAGE
        obj = ovlm(cluster, ns, name)
        assert not obj["status"]["attention"].get("fallback")
        assert condition(obj, "Ready")["reason"] == "OutOfMemory"  # type: ignore[index]
        assert not events(cluster, ns, "FlashAttentionFallback")
