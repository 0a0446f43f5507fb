"""Node loss on devcluster (its own cluster, with shortened node-loss timeouts): the heartbeats of the
node that runs the OmegaVLM's pod stop; the node turns NotReady, the pod is evicted and rescheduled onto
another Hopper node, the OmegaVLM is Ready again (bench/reliability/node_loss.py; the same run with its
times is `python -m bench.reliability node-loss`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.reliability.node_loss import TIMINGS, run_node_loss
from devcluster import TEST_KUBELET, Cluster
from tests.e2e.fallback_support import install_crd, tiny_checkpoint

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def lossy_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("nodeloss-cluster")
    with Cluster.start(state, kubelet=TEST_KUBELET, owner_pid=os.getpid(), node_loss=TIMINGS) as cluster:
        install_crd(cluster)
        yield cluster


def test_a_lost_node_its_pod_moves_to_another_hopper_node_and_the_omegavlm_is_ready_again(
    lossy_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model_dir = tiny_checkpoint(tmp_path_factory.getbasetemp() / "fallback-tiny" / "qwen2_5_vl")
    run = run_node_loss(lossy_cluster, model_dir, tmp_path)
    print(run.as_dict())
    log = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("operator-*.log"))
    assert run.violations == [], f"{run.as_dict()}\n{log}"
    assert run.not_ready_s is not None and run.not_ready_s <= TIMINGS["grace_s"] + 15, run.as_dict()
