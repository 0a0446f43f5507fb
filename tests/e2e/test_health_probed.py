"""Issue 12 end to end: pods whose /health the operator cannot reach make HealthProbed False.

A flash image whose process runs but listens on no port (as a pod behind a default-deny
NetworkPolicy looks to the operator): the direct probe is refused, the API server's pod proxy (auto
mode) refuses devcluster's loopback pod address, and within three probe intervals (plus the new
pod's own three intervals to answer) the OmegaVLM says so, instead of "no failure seen".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    PROBE_INTERVAL,
    PYTHON,
    REPOSITORY,
    SDPA_IMAGE,
    condition,
    omegavlm,
    ovlm,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(300)]

SILENT_IMAGE = f"{REPOSITORY}:silent-flash"


def test_unreachable_pods_turn_health_probed_false_with_the_reason(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    cluster.add_image(SILENT_IMAGE, [PYTHON, "-c", "import time; time.sleep(3600)"])
    ns, name = namespace, "silent"
    image = {"repository": REPOSITORY, "flashImage": SILENT_IMAGE, "sdpaImage": SDPA_IMAGE}
    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(omegavlm(name, ns, model_dir, attention="auto", image=image))

        def probed_false() -> dict | None:
            hp = condition(ovlm(cluster, ns, name), "HealthProbed")
            return hp if hp and hp["status"] == "False" else None

        # The pod's own 3 intervals to answer, then 3 more: False within a few rounds after that.
        hp = wait_for(probed_false, 90 + 6 * PROBE_INTERVAL, "HealthProbed False")
        assert hp["reason"] == "PodsUnreachable"
        assert hp["message"].startswith("1/1 pods unreachable"), hp["message"]
        assert "direct: " in hp["message"] and "through the API server: " in hp["message"], hp["message"]
        obj = ovlm(cluster, ns, name)
        assert obj["status"]["attention"]["counts"].get("unknown") == 1, obj["status"]["attention"]
        degraded = condition(obj, "FlashAttentionDegraded")
        assert degraded is not None and degraded["status"] == "Unknown", degraded
        assert not obj["status"]["attention"].get("fallback")  # nothing seen: no rollback either
