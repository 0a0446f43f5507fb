"""Conditions: lastTransitionTime changes only when the status flips."""

from __future__ import annotations

from omega_operator import conditions as c
from omega_operator.fallback import Reason


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
    conds = c.set_condition([], c.FLASH_DEGRADED, "False", Reason.NOT_DEGRADED, "", 1, now="t0")
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


def test_rfc3339_is_utc_to_the_second() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    assert c.rfc3339(datetime(2026, 1, 1, 1, 2, 3, 999999, tzinfo=timezone(timedelta(hours=2)))) == (
        "2025-12-31T23:02:03Z"
    )
    assert c.rfc3339(datetime(2026, 11, 24, 21, 0, tzinfo=UTC)) == "2026-11-24T21:00:00Z"
