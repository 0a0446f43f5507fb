"""Conditions: lastTransitionTime changes only when the status flips."""

from __future__ import annotations

from omega_operator import conditions as c


def test_transition_time_only_on_flip() -> None:
    conds = c.set_condition([], c.READY, "False", c.REPLICAS_NOT_READY, "0/1", 1, now="2026-01-01T00:00:00Z")
    again = c.set_condition(
        conds, c.READY, "False", c.UNSCHEDULABLE, "other msg", 2, now="2026-01-01T00:05:00Z"
    )
    ready = c.get(again, c.READY)
    assert ready is not None
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (ready["reason"], ready["message"], ready["observedGeneration"]) == (
        c.UNSCHEDULABLE,
        "other msg",
        2,
    )
    flipped = c.set_condition(
        again, c.READY, "True", c.ALL_REPLICAS_READY, "1/1", 2, now="2026-01-01T00:09:00Z"
    )
    assert c.get(flipped, c.READY)["lastTransitionTime"] == "2026-01-01T00:09:00Z"  # type: ignore[index]
    assert c.is_true(flipped, c.READY)


def test_input_untouched_and_order_stable() -> None:
    conds = c.set_condition([], c.FLASH_DEGRADED, "False", c.FLASH_ACTIVE, "", 1, now="t0")
    conds = c.set_condition(conds, c.SCHEDULABLE, "True", c.SCHEDULED, "", 1, now="t0")
    snapshot = [dict(x) for x in conds]
    out = c.set_condition(conds, c.READY, "True", c.ALL_REPLICAS_READY, "", 1, now="t1")
    assert conds == snapshot
    assert [x["type"] for x in out] == [c.READY, c.SCHEDULABLE, c.FLASH_DEGRADED]


def test_flipped() -> None:
    a = c.set_condition([], c.READY, "False", "A", "", 1, now="t")
    b = c.set_condition(a, c.READY, "False", "B", "", 1, now="t")
    assert c.flipped(a, b, c.READY)
    assert not c.flipped(b, b, c.READY)
    assert c.flipped(None, b, c.READY)
