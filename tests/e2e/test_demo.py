"""The omega-vlm demo steps (devcluster/demo_omega.py): the parts the e2e fallback tests do not cover.

The flash -> sdpa loop itself is tested in test_fallback_rollback.py; running the whole demo here
would cost another minute or more. What is the demo's own: the CRD step's output, a manifest the
CRD and the operator accept, and the background operator's life cycle: started, restarted by a
second demo, and stopped by ``python -m devcluster down`` through the cluster's pid registry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omega_operator.api.models import OmegaVLMSpec

from devcluster import TEST_KUBELET, Cluster, NodeSpec, demo_operator
from devcluster import demo_omega as demo
from devcluster.cluster import running_pids
from devcluster.procs import PidRegistry, alive

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]


def test_demo_registers_its_steps_after_devclusters_own() -> None:
    from devcluster.demo import STEPS

    titles = [s.title for s in STEPS]
    ours = [i for i, t in enumerate(titles) if t.startswith("omega-vlm ")]
    assert len(ours) == 6 and ours == list(range(ours[0], ours[0] + 6)) and ours[0] > 0, titles


def test_demo_manifest_is_a_valid_omegavlm(devcluster: Cluster, tmp_path: Path) -> None:
    obj = demo.manifest("default", tmp_path / "model", name="demo-check")
    spec = OmegaVLMSpec.model_validate(obj["spec"])  # the operator's own model of the CRD
    assert spec.attention == "auto" and spec.replicas == 1
    assert spec.image is not None and spec.image.repository.endswith("omega-vlm-server")
    demo.install_crd(devcluster)
    out = devcluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj))
    assert "demo-check" in out.stdout


def test_crd_step_shows_the_api(devcluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    demo.install_crd(devcluster)
    out = capsys.readouterr().out
    assert "$ kubectl apply --validate=false -f" in out
    assert "vlm.omega.io/v1alpha1" in out and "OmegaVLM" in out
    assert "maxBatchSize" in out and "error:" not in out, out


def test_operator_is_restarted_by_a_second_demo_and_stopped_by_devcluster_down(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    with Cluster.start(state, nodes=[NodeSpec("cpu-x")], kubelet=TEST_KUBELET, owner_pid=os.getpid()) as c:
        demo.install_crd(c)
        first, _ = demo_operator.start_operator(c)
        assert alive(first) and c.pids()[demo_operator.OPERATOR] == first

        # A second `make demo`: the earlier operator is stopped, a fresh one registered.
        second, _ = demo_operator.start_operator(c)
        assert second != first and not alive(first)
        assert c.pids()[demo_operator.OPERATOR] == second
        assert "started by the omega-vlm demo" in demo_operator.operator_log(c).read_text()

        # It outlives the process that started it (own session) and is listed by `devcluster status`.
        assert os.getpgid(second) == second
        status = subprocess.run(
            [sys.executable, "-m", "devcluster", "--state-dir", str(state), "status"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert demo_operator.OPERATOR in status.stdout, status.stdout

        # `python -m devcluster down` stops it with everything else.
        down = subprocess.run(
            [sys.executable, "-m", "devcluster", "--state-dir", str(state), "down"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert down.returncode == 0, down.stderr
        assert not alive(second)
        assert running_pids(state) == {}
        assert PidRegistry(c.layout.pids).items() == {}
