"""Pure status computation and the merge-patch diff."""

from __future__ import annotations

from typing import Any

from omega_operator import conditions as c
from omega_operator import status as st
from omega_operator.api import parse_spec

NOW = "2026-01-01T00:00:00Z"
OK = st.FlashState(False, "FlashAttentionHealthy", "no flash-attention failure seen")


def _dep(
    replicas: int, ready: int, updated: int | None = None, gen: int = 1, observed: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
        },
    }


def _compute(spec: dict[str, Any], **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "spec": parse_spec(spec),
        "generation": 3,
        "old": {},
        "attention": {"requested": "auto"},
        "variant": "flash",
        "image": "img",
        "deployment": None,
        "problems": [],
        "flash": OK,
        "now": NOW,
    }
    args.update(kw)
    return st.compute(**args)


def test_ready(minimal_spec: dict[str, Any]) -> None:
    s = _compute(minimal_spec, deployment=_dep(1, 1))
    assert s["phase"] == "Ready" and s["replicaSummary"] == "1/1" and s["observedGeneration"] == 3
    assert c.get(s["conditions"], c.READY)["reason"] == c.ALL_REPLICAS_READY  # type: ignore[index]
    assert c.get(s["conditions"], c.PROGRESSING)["status"] == "False"  # type: ignore[index]
    # a second computation from the first status changes nothing: no write
    again = _compute(minimal_spec, deployment=_dep(1, 1), old=s, now="2026-01-02T00:00:00Z")
    assert st.diff(s, again) == {}


def test_selector_is_the_pods_label_selector_for_the_scale_subresource(minimal_spec: dict[str, Any]) -> None:
    s = _compute(minimal_spec, deployment=_dep(1, 1), name="cap")
    assert s["selector"] == "app.kubernetes.io/name=omega-vlm-server,app.kubernetes.io/instance=cap"
    assert "selector" not in _compute(minimal_spec, deployment=_dep(1, 1))


def test_rolling_out(minimal_spec: dict[str, Any]) -> None:
    minimal_spec["replicas"] = 2
    s = _compute(minimal_spec, deployment=_dep(2, 1, updated=1))
    assert s["phase"] == "Progressing"
    assert c.get(s["conditions"], c.PROGRESSING)["reason"] == c.ROLLING_OUT  # type: ignore[index]
    assert c.get(s["conditions"], c.READY)["status"] == "False"  # type: ignore[index]
    s = _compute(minimal_spec, deployment=_dep(2, 2, gen=2, observed=1))  # controller not caught up
    assert s["phase"] == "Progressing"


def test_unschedulable(minimal_spec: dict[str, Any]) -> None:
    msg = "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, 3 node(s) didn't match node affinity."
    s = _compute(minimal_spec, deployment=_dep(1, 0), problems=[st.Problem(c.UNSCHEDULABLE, msg, "p-1")])
    sched = c.get(s["conditions"], c.SCHEDULABLE)
    assert sched is not None and sched["status"] == "False" and msg in sched["message"]
    ready = c.get(s["conditions"], c.READY)
    assert ready is not None and ready["reason"] == c.UNSCHEDULABLE and msg in ready["message"]
    assert s["phase"] == "Pending"


def test_pod_problem_is_degraded(minimal_spec: dict[str, Any]) -> None:
    s = _compute(minimal_spec, deployment=_dep(1, 0), problems=[st.Problem("OOMKilled", "exit 137", "p-1")])
    assert s["phase"] == "Degraded"
    assert c.get(s["conditions"], c.READY)["reason"] == "OOMKilled"  # type: ignore[index]


def test_fallback_shows_in_ready_reason(minimal_spec: dict[str, Any]) -> None:
    flash = st.FlashState(True, "FlashAttentionLoadFailed", "rolled back ...", rolled_back=True)
    s = _compute(minimal_spec, deployment=_dep(1, 1), flash=flash, variant="sdpa")
    assert s["phase"] == "Ready"
    assert c.get(s["conditions"], c.READY)["reason"] == "FlashAttentionLoadFailed"  # type: ignore[index]
    assert c.get(s["conditions"], c.FLASH_DEGRADED)["status"] == "True"  # type: ignore[index]
    unhandled = st.FlashState(True, "FlashAttentionLoadFailed", "fallback disabled", unhandled=True)
    assert _compute(minimal_spec, deployment=_dep(1, 1), flash=unhandled)["phase"] == "Degraded"


def test_invalid_keeps_observed_fields() -> None:
    old = {"replicas": 2, "image": "x", "conditions": []}
    new = st.invalid(old=old, generation=4, message="spec.replicas: bad", now=NOW)
    assert new["phase"] == "Failed" and new["replicas"] == 2
    ready = c.get(new["conditions"], c.READY)
    assert ready is not None and ready["reason"] == c.INVALID_SPEC and "spec.replicas" in ready["message"]


def test_diff_is_a_merge_patch() -> None:
    old = {"attention": {"requested": "auto", "fallback": {"at": "t"}}, "phase": "Ready", "kopf": {"x": 1}}
    new = {"attention": {"requested": "auto"}, "phase": "Ready", "image": None}
    assert st.diff(old, new) == {"attention": {"fallback": None}}
    assert st.diff(new, new) == {}
