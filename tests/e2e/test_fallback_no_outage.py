"""Issue 12 end to end: a rollback of pods that already serve sdpa in process takes no Ready replica down.

The issue's reproduction: the operator creates the Deployment and stops; the pods come up and fall
back to sdpa in process (flash-attn cannot load here), Ready; the operator starts again, sees the
flash failure on /health and rolls back. A sampler counts the Ready (not terminating) pods every
200 ms through the rollback: the count never drops below its value before the rollback.

Real parts: the devcluster control plane and its Deployment controller, the operator process, the
inference-server processes (tiny checkpoint, CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    FLASH_IMAGE,
    SDPA_IMAGE,
    ReadySampler,
    all_ready_on,
    deployed_image,
    deployment,
    omegavlm,
    ovlm,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("replicas", [1, 2])
def test_rollback_of_serving_pods_never_drops_the_ready_count(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path, replicas: int
) -> None:
    ns, name = namespace, "steady"
    with running_operator(cluster, ns, tmp_path / "operator-1.log"):
        cluster.apply(omegavlm(name, ns, model_dir, attention="auto", replicas=replicas))
        wait_for(lambda: deployment(cluster, ns, name), 60, "Deployment created")
    # The operator is gone; the flash pods come up on sdpa in process, Ready.
    assert deployed_image(cluster, ns, name) == FLASH_IMAGE
    wait_for(
        lambda: all_ready_on(cluster, ns, FLASH_IMAGE, replicas), 300, "flash pods Ready (sdpa in process)"
    )
    with ReadySampler(cluster, ns) as sampler:
        before = sampler.count()
        assert before == replicas
        with running_operator(cluster, ns, tmp_path / "operator-2.log"):
            wait_for(lambda: deployed_image(cluster, ns, name) == SDPA_IMAGE, 120, "rolled back to sdpa")
            wait_for(lambda: all_ready_on(cluster, ns, SDPA_IMAGE, replicas), 300, "sdpa pods Ready")
            obj = wait_for(
                lambda: (o := ovlm(cluster, ns, name))["status"].get("phase") == "Ready" and o, 60, "Ready"
            )
    lowest = min(n for _, n in sampler.samples)
    print(
        f"replicas={replicas}: {len(sampler.samples)} samples, lowest Ready {lowest}, "
        f"longest below {replicas}: {sampler.longest_below(replicas):.1f}s, "
        f"longest at zero: {sampler.longest_below(1):.1f}s"
    )
    assert lowest >= before, sampler.samples
    assert obj["status"]["attention"]["fallback"]["reason"] == "FlashAttentionLoadFailed"
    # Rolled out: the strategy is the normal one again (spec changes never surge).
    dep = deployment(cluster, ns, name)
    assert dep is not None
    wait_for(
        lambda: (
            (deployment(cluster, ns, name) or {})["spec"]["strategy"]["rollingUpdate"]
            == {"maxSurge": 0, "maxUnavailable": 1}
        ),
        60,
        "normal strategy again",
    )
