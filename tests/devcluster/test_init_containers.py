"""The process kubelet runs initContainers as a kubelet does: in order, each to success, first.

Real control plane, real processes: the containers start only after every init container has
exited 0; a failing one is restarted with back-off while the pod stays Pending (Initialized
False, containers PodInitializing); status.initContainerStatuses reports them.
"""

from __future__ import annotations

import sys
import uuid

import pytest

from devcluster import Cluster
from tests.devcluster.test_podcontract import PY, log_line, pod, status

pytestmark = pytest.mark.devcluster


@pytest.fixture(scope="module")
def ns(devcluster: Cluster) -> str:
    name = f"dc-init-{uuid.uuid4().hex[:6]}"
    devcluster.kubectl("create", "namespace", name)
    devcluster.add_image(PY, [sys.executable, "-c"], env={"PYTHONUNBUFFERED": "1"})
    return name


def _init(name: str, code: str) -> dict[str, object]:
    return {
        "name": name,
        "image": f"{PY}:1",
        "args": [code],
        "volumeMounts": [{"name": "w", "mountPath": "/w"}],
    }


def test_init_containers_run_in_order_to_success_before_the_containers(devcluster: Cluster, ns: str) -> None:
    write = "import pathlib; p = pathlib.Path('/w/order'); p.write_text(p.read_text() + '{}' if p.exists() else '{}')"
    body = pod(
        "init-order",
        ns,
        [
            {
                "name": "main",
                "args": [
                    "import time; print('main saw', open('/w/order').read(), flush=True); time.sleep(600)"
                ],
                "volumeMounts": [{"name": "w", "mountPath": "/w"}],
            }
        ],
        volumes=[{"name": "w", "emptyDir": {}}],
        initContainers=[_init("first", write.format("1", "1")), _init("second", write.format("2", "2"))],
    )
    devcluster.apply(body)
    assert log_line(devcluster, ns, "init-order", "main", "main saw") == "main saw 12"
    st = status(devcluster, ns, "init-order")
    inits = {s["name"]: s for s in st["initContainerStatuses"]}
    assert [s["name"] for s in st["initContainerStatuses"]] == ["first", "second"]
    for s in inits.values():
        assert s["state"]["terminated"]["exitCode"] == 0 and s["state"]["terminated"]["reason"] == "Completed"
        assert s["ready"] is True and s["restartCount"] == 0
    cond = {c["type"]: c["status"] for c in st["conditions"]}
    assert cond["Initialized"] == "True"


def test_a_failing_init_container_is_restarted_and_holds_the_pod_pending(
    devcluster: Cluster, ns: str
) -> None:
    fail_twice = (
        "import pathlib, sys; p = pathlib.Path('/w/n'); n = int(p.read_text()) if p.exists() else 0; "
        "p.write_text(str(n + 1)); print('attempt', n, flush=True); sys.exit(0 if n >= 2 else 3)"
    )
    body = pod(
        "init-retry",
        ns,
        [{"name": "main", "args": ["import time; print('main up', flush=True); time.sleep(600)"]}],
        volumes=[{"name": "w", "emptyDir": {}}],
        initContainers=[_init("flaky", fail_twice)],
    )
    devcluster.apply(body)

    def pending_while_failing() -> dict[str, object] | None:
        st = status(devcluster, ns, "init-retry")
        (init,) = st.get("initContainerStatuses") or [{}]
        if init.get("restartCount", 0) < 1 or "running" in (init.get("state") or {}):
            return None
        return st

    st = devcluster.wait_for(pending_while_failing, timeout=60, what="a failed init container")
    assert st["phase"] == "Pending"
    cond = {c["type"]: c for c in st["conditions"]}
    assert cond["Initialized"]["status"] == "False" and "flaky" in cond["Initialized"]["message"]
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert log_line(devcluster, ns, "init-retry", "main", "main up", timeout=60) == "main up"
    (init,) = status(devcluster, ns, "init-retry")["initContainerStatuses"]
    assert init["restartCount"] == 2 and init["state"]["terminated"]["exitCode"] == 0
