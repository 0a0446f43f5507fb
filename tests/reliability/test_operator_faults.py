"""Faults in the operator's loop on devcluster (short runs): the operator SIGKILLed, the API server and
etcd restarted, each during a flash->sdpa rollback or a plain reconcile.

Operator kill: once in each phase of the rollback (at the first failing /health of the flash pod, once
the fallback record is in the status, once the Deployment is on sdpa), a new process started at once.
Control plane: the API server, and separately etcd, down 5 s right after the create (mid reconcile) and
at the first failing /health (mid rollback); the operator is not restarted.
Each time: one Deployment image write per variant, one record, the status consistent, the operator
alive (bench/reliability/faults.py checks and says which). The long runs are
`python -m bench.reliability operator-kill` (20 kills at random moments) and `... control-plane`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.reliability.faults import PHASES, run_iteration
from devcluster import Cluster, restarts
from tests.e2e.fallback_support import (
    OperatorProcess,
    deployment,
    install_crd,
    make_namespace,
    omegavlm,
    tiny_checkpoint,
    wait_for,
)

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
    run = run_iteration(cluster, model_dir, tmp_path, PHASES.index(phase), fault="operator", phase=phase)
    assert run.violations == [], f"{run.as_dict()}\n{_logs(tmp_path)}"
    assert run.phase_at_fault != "ready", f"the kill came after Ready: {run.as_dict()}"


@pytest.mark.parametrize("attention", ["sdpa", "auto"])
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_restart_of_the_control_plane_mid_reconcile_or_rollback_converges_without_duplicate_writes(
    cluster: Cluster, model_dir: Path, tmp_path: Path, component: str, attention: str
) -> None:
    run = run_iteration(
        cluster, model_dir, tmp_path, 10, fault=component, attention=attention, phase="window_open"
    )
    assert run.violations == [], f"{run.as_dict()}\n{_logs(tmp_path)}"
    assert run.phase_at_fault != "ready", f"the restart came after Ready: {run.as_dict()}"


def _logs(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(folder.glob("operator-*.log")))


def test_an_operator_that_starts_while_the_api_server_restarts_still_serves(
    cluster: Cluster, model_dir: Path, tmp_path: Path
) -> None:
    """kopf lists the resources once at start-up; an API server restarting then answered discovery
    without some groups and the operator served nothing (1 of 12 in `bench.reliability control-plane`).
    The operator now waits until discovery serves what it watches (``api_ready``). A race: this test
    does not always hit the window, so it guards against the regression rather than proving the fix."""
    ns = make_namespace(cluster, "startup")
    restarts.request(cluster.state_dir, "kube-apiserver", down_s=3.0)  # within a second: down 3 s
    op = OperatorProcess(cluster, ns, tmp_path / "operator-startup.log").start()
    try:
        restarts.wait_done(cluster.state_dir, "kube-apiserver", 90)
        cluster.apply(omegavlm("late", ns, model_dir, attention="sdpa"))
        wait_for(lambda: deployment(cluster, ns, "late"), 90, "a Deployment for an OmegaVLM created after it")
    finally:
        op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
