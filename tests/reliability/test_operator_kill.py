"""The operator killed with SIGKILL during a flash->sdpa rollback and restarted (short run, 3 iterations).

One kill in each phase of the rollback: at the first failing /health of the flash pod, once the fallback
record is in the status, once the Deployment is on sdpa. Each time: exactly one Deployment image write
to sdpa, one record, the status consistent (bench/reliability/operator_kill.py checks and says which).
The long run (20 kills at random moments) is `python -m bench.reliability operator-kill`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.reliability.operator_kill import PHASES, run_iteration
from devcluster import Cluster
from tests.e2e.fallback_support import install_crd, tiny_checkpoint

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(devcluster: Cluster) -> Cluster:
    install_crd(devcluster)
    return devcluster


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.getbasetemp() / "fallback-tiny" / "qwen2_5_vl")


@pytest.mark.parametrize("phase", PHASES)
def test_a_kill_in_each_phase_of_the_rollback_still_rolls_back_exactly_once(
    cluster: Cluster, model_dir: Path, tmp_path: Path, phase: str
) -> None:
    run = run_iteration(cluster, model_dir, tmp_path, PHASES.index(phase), phase=phase)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("operator-*.log")))
    assert run.violations == [], f"{run.as_dict()}\n{logs}"
    assert run.phase_at_kill != "ready", f"the kill came after Ready: {run.as_dict()}"
