"""Two operator replicas with kopf peering on devcluster: the paused one writes nothing, the other takes over.

The pods run ``flash_stub.py`` (no model): its /health says flash-attn loaded until the test POSTs
``/flip``, then reports a flash-attn load failure, the signal the operator rolls back on. So the test
decides when a rollback is due, and can check who does it:

- a replica paused by a live peer of higher priority neither rolls back nor writes anything (its refresh
  loop is gated on the peering object, omega_operator.peering_gate), and does the rollback once the peer
  is gone;
- with two real replicas, SIGKILL of the active one: the standby takes over (kopf resumes it once the
  dead peer's lease, kopf's peering lifetime of 60 s, has run out) and repairs a deleted Deployment; the
  takeover time is measured and bounded.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    PROBE_INTERVAL,
    OperatorProcess,
    all_ready_on,
    deployed_image,
    deployment,
    install_crd,
    make_namespace,
    ovlm,
    pods,
    wait_for,
)
from tests.e2e.operator_support import api_writes

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = "registry.example.com/peering-stub"
FLASH, SDPA = f"{REPO}:v1-flash", f"{REPO}:v1-sdpa"
STUB = Path(__file__).with_name("flash_stub.py")
PEERING = "omega-vlm"
NAME = "peered"
TAKEOVER_BOUND_S = 90.0  # kopf's peering lifetime (60 s) plus its keep-alive and our probe interval

# kopf's KopfPeering CRD (kopf.dev/v1, as kopf's documentation gives it): the chart expects it installed.
PEERING_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"plural": "kopfpeerings", "singular": "kopfpeering", "kind": "KopfPeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def cluster(devcluster: Cluster) -> Cluster:
    install_crd(devcluster)
    devcluster.apply(PEERING_CRD)
    devcluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/kopfpeerings.kopf.dev")
    for image, attn in ((FLASH, "flash"), (SDPA, "sdpa")):
        devcluster.add_image(image, [sys.executable, str(STUB)], env={"STUB_ATTN": attn}, uid=10001)
    return devcluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    ns = make_namespace(cluster, "peer")
    cluster.apply(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING, "namespace": ns}}
    )
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def manifest(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "vlm.omega.io/v1alpha1",
        "kind": "OmegaVLM",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"name": "tiny", "uri": "file:///models/tiny"},
            "replicas": 1,
            "image": {"repository": REPO, "tag": "v1"},
            "attention": "auto",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        },
    }


def replica(cluster: Cluster, ns: str, log: Path, priority: int) -> OperatorProcess:
    env = {"OMEGA_OPERATOR_PEERING": PEERING, "OMEGA_OPERATOR_PEERING_PRIORITY": str(priority)}
    return OperatorProcess(cluster, ns, log, env=env).start()


def set_rival(cluster: Cluster, ns: str, priority: int | None) -> None:
    """A live peer of ``priority`` in the peering object (None: remove it), as another replica would be."""
    entry = (
        None
        if priority is None
        else {"priority": priority, "lifetime": 3600, "lastseen": datetime.now(UTC).isoformat()}
    )
    patch = json.dumps({"status": {"rival@test": entry}})
    cluster.kubectl("patch", "kopfpeering", PEERING, "-n", ns, "--type=merge", "-p", patch)


def flip_flash_off(cluster: Cluster, ns: str) -> None:
    for p in pods(cluster, ns):
        if p["spec"]["containers"][0]["image"] == FLASH and p["status"].get("podIP"):
            req = urllib.request.Request(f"http://{p['status']['podIP']}:8000/flip", method="POST", data=b"")
            urllib.request.urlopen(req, timeout=5).read()


def ready_on_flash(cluster: Cluster, ns: str) -> bool:
    return (
        all_ready_on(cluster, ns, FLASH, 1)
        and ovlm(cluster, ns, NAME).get("status", {}).get("phase") == "Ready"
    )


def test_a_paused_replica_neither_rolls_back_nor_writes_and_resumes_when_the_peer_goes(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    op = replica(cluster, ns, tmp_path / "operator.log", priority=10)
    try:
        cluster.apply(manifest(ns))
        wait_for(lambda: ready_on_flash(cluster, ns), 120, "Ready on the flash stub")

        set_rival(cluster, ns, 100)
        wait_for(lambda: "Pausing operations in favour of" in op.log(), 30, "kopf paused this replica")
        time.sleep(2 * PROBE_INTERVAL + 1)  # the refresh loop's gate reads the peering object too
        before = api_writes(cluster)
        flip_flash_off(cluster, ns)
        time.sleep(4 * PROBE_INTERVAL + 1)  # several refresh rounds with the failure on /health
        assert deployed_image(cluster, ns, NAME) == FLASH, "a paused replica rolled the Deployment back"
        assert api_writes(cluster) == before, "a paused replica wrote to the API server"

        set_rival(cluster, ns, None)
        resumed = time.monotonic()
        wait_for(lambda: deployed_image(cluster, ns, NAME) == SDPA, 60, "rolled back once active again")
        print(f"rollback {time.monotonic() - resumed:.1f} s after the rival left")
    except BaseException:
        print(op.log()[-4000:])
        raise
    finally:
        op.stop()


def test_sigkill_of_the_active_replica_the_standby_takes_over_within_the_bound(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    active = replica(cluster, ns, tmp_path / "active.log", priority=20)
    standby: OperatorProcess | None = None
    try:
        cluster.apply(manifest(ns))
        wait_for(lambda: ready_on_flash(cluster, ns), 120, "Ready on the flash stub")
        standby = replica(cluster, ns, tmp_path / "standby.log", priority=10)
        wait_for(lambda: "omega-vlm-operator started" in standby.log(), 60, "the standby started")
        time.sleep(3 * PROBE_INTERVAL)  # kopf starts paused; neither kopf nor the refresh loop resume
        assert "Resuming operations" not in standby.log() and "refresh loop resumed" not in standby.log()

        assert active.proc is not None
        active.proc.kill()
        killed = time.monotonic()
        cluster.kubectl("delete", "deployment", NAME, "-n", ns)
        wait_for(
            lambda: deployment(cluster, ns, NAME), TAKEOVER_BOUND_S, "Deployment recreated by the standby"
        )
        took = time.monotonic() - killed
        print(f"takeover: Deployment recreated {took:.1f} s after SIGKILL of the active replica")
        assert "Resuming operations" in standby.log()
        wait_for(lambda: ready_on_flash(cluster, ns), 120, "the new pod Ready on the flash stub")
        flip_flash_off(cluster, ns)  # and the standby acts on /health as the active one would have
        wait_for(lambda: deployed_image(cluster, ns, NAME) == SDPA, 60, "rolled back by the standby")
    except BaseException:
        print(active.log()[-3000:])
        if standby is not None:
            print(standby.log()[-3000:])
        raise
    finally:
        active.stop()
        if standby is not None:
            standby.stop()
