"""Issue 12 end to end: a rollback of pods that already serve sdpa in process takes no Ready replica down.

The issue's reproduction: the operator creates the Deployment and stops; the pods come up and fall
back to sdpa in process (flash-attn cannot load here), Ready; the operator starts again, sees the
flash failure on /health and rolls back. A sampler counts the Ready (not terminating) pods every
200 ms through the rollback: the count never drops below its value before the rollback.

Real parts: the devcluster control plane and its Deployment controller, the operator process, the
inference-server processes (tiny checkpoint, CPU).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from devcluster import Cluster
from tests.e2e.fallback_support import (
    FLASH_IMAGE,
    SDPA_IMAGE,
    all_ready_on,
    deployed_image,
    deployment,
    omegavlm,
    ovlm,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(900)]


class ReadySampler:
    """Counts the Ready, not terminating pods of a namespace every ``period`` seconds, in a thread."""

    def __init__(self, cluster: Cluster, namespace: str, period: float = 0.2) -> None:
        self.api = client.CoreV1Api(cluster.api_client())
        self.namespace, self.period = namespace, period
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self) -> int:
        pods = self.api.list_namespaced_pod(self.namespace).items
        return sum(
            1
            for p in pods
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.count()))
            self._stop.wait(self.period)

    def __enter__(self) -> ReadySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def longest_below(self, floor: int) -> float:
        """The longest run of samples with fewer than ``floor`` Ready pods, in seconds."""
        longest, start = 0.0, None
        for t, n in self.samples:
            if n < floor and start is None:
                start = t
            elif n >= floor and start is not None:
                longest, start = max(longest, t - start), None
        if start is not None:
            longest = max(longest, self.samples[-1][0] - start)
        return longest


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
