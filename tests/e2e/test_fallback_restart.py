"""Issue 5 end to end: the rollback survives an operator crash between detection and the Deployment
write: after the restart exactly one rollback happens (one record, one Deployment revision, one Event).

The crash point is test-only: the first operator process runs ``tests.e2e.failpoint_operator``, which
exits right after the fallback record is written into the status (omega_operator.rollback).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devcluster import Cluster
from tests.e2e import failpoint_operator
from tests.e2e.fallback_support import (
    FLASH_IMAGE,
    PROBE_INTERVAL,
    SDPA_IMAGE,
    OperatorProcess,
    all_ready_on,
    deployed_image,
    deployment,
    dump,
    events,
    omegavlm,
    ovlm,
    replica_set_images,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

FAILPOINT_EXIT = failpoint_operator.EXIT_CODE


def test_operator_killed_between_detection_and_rollback_rolls_back_exactly_once(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    ns, name = namespace, "resilient"
    first = OperatorProcess(
        cluster, ns, tmp_path / "operator-1.log", module=failpoint_operator.__name__
    ).start()
    second: OperatorProcess | None = None
    try:
        cluster.apply(omegavlm(name, ns, model_dir, attention="auto"))

        # The first operator detects the failure, records it, and dies before the Deployment write.
        def exited_or_rolled_back_without_the_failpoint() -> bool:
            if first.proc is not None and first.proc.poll() is not None:
                return True
            # Rolled back while still running: the reconcile does not record the fallback in the
            # status before the Deployment write (rollback.persist_fallback is not wired in).
            return deployed_image(cluster, ns, name) == SDPA_IMAGE

        wait_for(exited_or_rolled_back_without_the_failpoint, 300, "operator exit at the failpoint")
        assert first.proc is not None and first.proc.poll() == FAILPOINT_EXIT, (
            "the Deployment moved to sdpa before the fallback was recorded in the status "
            "(reconcile must call rollback.persist_fallback before applying the Deployment)\n"
            + first.log()[-3000:]
        )
        obj = ovlm(cluster, ns, name)
        recorded = obj["status"]["attention"]["fallback"]
        assert recorded["reason"] == "FlashAttentionLoadFailed"
        assert deployed_image(cluster, ns, name) == FLASH_IMAGE  # the Deployment was not written yet

        # A new operator process finishes the job from the status alone.
        second = OperatorProcess(cluster, ns, tmp_path / "operator-2.log").start()
        wait_for(
            lambda: deployed_image(cluster, ns, name) == SDPA_IMAGE, 120, "Deployment on sdpa after restart"
        )
        wait_for(lambda: all_ready_on(cluster, ns, SDPA_IMAGE, 1), 240, "sdpa pod Ready")
        wait_for(
            lambda: ovlm(cluster, ns, name)["status"].get("attention", {}).get("active") == "sdpa",
            60,
            "attention.active sdpa",
        )
        # Exactly one rollback: one record (unchanged), one Deployment revision to sdpa, one Event.
        time.sleep(3 * PROBE_INTERVAL)
        assert ovlm(cluster, ns, name)["status"]["attention"]["fallback"] == recorded
        assert replica_set_images(cluster, ns) == {FLASH_IMAGE, SDPA_IMAGE}
        dep = deployment(cluster, ns, name)
        assert dep is not None and dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
        assert len(events(cluster, ns, "FlashAttentionFallback")) == 1
    except BaseException:
        print(dump(cluster, ns, second or first))
        print("--- first operator\n" + first.log()[-4000:])
        raise
    finally:
        first.stop()
        if second is not None:
            second.stop()
