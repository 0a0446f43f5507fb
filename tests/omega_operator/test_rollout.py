"""Issue 12, part 2: the rollback takes no Ready replica down first; spec changes still never surge."""

from __future__ import annotations

from typing import Any

import pytest
from omega_operator import builders as b
from omega_operator import conditions as c
from omega_operator import rollout
from omega_operator import status as st
from omega_operator.fallback import Action, Decision, FallbackRecord, PodView, decide

from tests.contracts import server_bodies as sb
from tests.omega_operator.test_fallback import FLASH, MINIMAL_SPEC, NOW, SDPA, pod, spec
from tests.omega_operator.test_fallback_evidence import ready_after


def flash_pod(name: str, *, ready: bool) -> PodView:
    return PodView.from_pod(pod(name, ready=ready))


def sdpa_pod(name: str, *, ready: bool = False, unschedulable: str | None = None) -> PodView:
    return PodView.from_pod(pod(name, image=SDPA, attn="sdpa", ready=ready, unschedulable=unschedulable))


def rollback_of(pods: list[PodView]) -> Decision:
    """The decision after flash failed on ``pods`` (each Ready on sdpa in process, or not)."""
    probes = {p.name: ready_after(sb.FLASH_IMPORT_ERROR) for p in pods}
    d = decide(spec(), None, pods, probes, now=NOW)
    assert d.action is Action.ROLLBACK and d.variant == "sdpa"
    return d


def rolling(surge: int, unavailable: int) -> dict[str, Any]:
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}


@pytest.mark.parametrize(
    ("ready", "expected"),
    [
        ([True], rolling(1, 0)),  # replicas 1, serving: the new pod first, the old one goes after
        ([True, True], rolling(1, 0)),
        ([True, False], rolling(1, 1)),  # the one not Ready goes at once, the Ready one waits
        ([False], rolling(0, 1)),  # nothing serves: replaced at once
        ([False, False, False], rolling(0, 3)),
    ],
)
def test_rollback_strategy(ready: list[bool], expected: dict[str, Any]) -> None:
    pods = [flash_pod(f"p{i}", ready=r) for i, r in enumerate(ready)]
    assert rollout.strategy(rollback_of(pods), pods) == expected


def test_normal_rollouts_never_surge() -> None:
    pods = [flash_pod("p0", ready=True)]
    keep = decide(spec(), None, pods, {}, now=NOW)
    assert rollout.strategy(keep, pods) == rollout.NORMAL == rolling(0, 1)
    # The normal strategy is the builders' one (one place for spec changes).
    dep = b.deployment(MINIMAL_SPEC, b.Owner("x", "ns", "uid"), "flash")
    assert dep["spec"]["strategy"] == rollout.NORMAL
    # Rolled back and the flash pods are gone: back to the normal strategy.
    d = rollback_of(pods)
    assert rollout.strategy(d, [sdpa_pod("n0", ready=True)]) == rollout.NORMAL
    # A new sdpa pod (same image, ATTN_IMPL=sdpa) is not an old pod.
    same = PodView.from_pod(pod("n1", image=FLASH, attn="sdpa", ready=True))
    assert rollout.strategy(d, [same]) == rollout.NORMAL


def test_a_sticky_fallback_keeps_the_surge_until_the_old_pods_are_gone() -> None:
    """After the rollback write (the record in force: KEEP), the strategy stays until rolled out."""
    old = flash_pod("p0", ready=True)
    first = rollback_of([old])
    assert first.fallback is not None
    status = {"fallback": first.fallback.to_status()}
    later = decide(spec(), status, [old, sdpa_pod("n0")], {}, now=NOW)
    assert later.action is Action.KEEP and later.variant == "sdpa"
    assert rollout.strategy(later, [old, sdpa_pod("n0")]) == rolling(1, 0)


def _record() -> FallbackRecord:
    d = rollback_of([flash_pod("p0", ready=True)])
    assert d.fallback is not None
    return d.fallback


def test_no_free_gpu_keeps_serving_and_progressing_names_the_wait() -> None:
    old = flash_pod("p0", ready=True)
    waiting = sdpa_pod("n0", unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    d = decide(spec(), {"fallback": _record().to_status()}, [old, waiting], {}, now=NOW)
    assert rollout.waiting_for_capacity(d, [old, waiting]) == 1
    assert rollout.waiting_for_capacity(d, [old, sdpa_pod("n0")]) == 0  # scheduled: not waiting
    v = st.verdict(MINIMAL_SPEC, d)
    dep = {
        "metadata": {"generation": 2},
        "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 1, "updatedReplicas": 1},
    }
    out = st.compute(
        spec=MINIMAL_SPEC,
        generation=1,
        old=None,
        attention=v.attention,
        variant="sdpa",
        image=SDPA,
        deployment=dep,
        problems=v.problems,
        flash=v.flash,
        now=c.rfc3339(NOW),
        waiting_for_capacity=1,
    )
    progressing = c.get(out["conditions"], c.PROGRESSING)
    assert progressing is not None and progressing["reason"] == "RollbackWaitingForCapacity"
    assert progressing["status"] == "True" and "keep serving sdpa in process" in progressing["message"]
    ready = c.get(out["conditions"], c.READY)
    assert ready is not None and ready["status"] == "True", ready
    assert out["phase"] == "Ready"
    schedulable = c.get(out["conditions"], c.SCHEDULABLE)
    assert schedulable is not None and schedulable["status"] == "False"
