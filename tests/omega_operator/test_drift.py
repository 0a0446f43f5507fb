"""Desired-vs-live comparison: apply only when one of our fields differs."""

from __future__ import annotations

import copy
from typing import Any

from omega_operator import builders as b
from omega_operator import drift
from omega_operator.api import parse_spec

OWNER = b.Owner(name="x", namespace="ns", uid="u")


def _live(desired: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns: our fields plus defaults and status."""
    live = copy.deepcopy(desired)
    live["metadata"].update(
        resourceVersion="7", generation=1, uid="d-uid", labels={**live["metadata"]["labels"], "extra": "1"}
    )
    pod = live["spec"]["template"]["spec"]
    pod["dnsPolicy"] = "ClusterFirst"
    c = pod["containers"][0]
    c["terminationMessagePath"] = "/dev/termination-log"
    c["startupProbe"]["httpGet"]["scheme"] = "HTTP"
    c["env"].append({"name": "ADDED_BY_HAND", "value": "1"})
    live["status"] = {"replicas": 1}
    return live


def test_no_apply_when_live_holds_our_fields(minimal_spec: dict[str, Any]) -> None:
    desired = b.deployment(parse_spec(minimal_spec), OWNER, "flash")
    assert not drift.needs_apply(desired, _live(desired))


def test_apply_when_missing_or_edited(minimal_spec: dict[str, Any]) -> None:
    desired = b.deployment(parse_spec(minimal_spec), OWNER, "flash")
    assert drift.needs_apply(desired, None)
    live = _live(desired)
    live["spec"]["replicas"] = 5
    assert drift.needs_apply(desired, live)
    live = _live(desired)
    live["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "sdpa"
    assert drift.needs_apply(desired, live)
    live = _live(desired)
    del live["spec"]["template"]["spec"]["tolerations"][0]
    assert drift.needs_apply(desired, live)
    live = _live(desired)
    live["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert drift.needs_apply(desired, live)


def test_bool_and_int_are_not_confused() -> None:
    assert not drift.contains({"a": 1}, {"a": True})
    assert drift.contains({"a": True, "b": 2}, {"a": True})


def test_a_field_the_user_removed_changes_the_stamp_and_forces_an_apply(minimal_spec: dict[str, Any]) -> None:
    with_selector = {**minimal_spec, "nodeSelector": {"zone": "a"}}
    before = drift.stamp(b.deployment(parse_spec(with_selector), OWNER, "flash"))
    after = drift.stamp(b.deployment(parse_spec(minimal_spec), OWNER, "flash"))
    live = _live(before)
    assert not drift.needs_apply(drift.stamp(b.deployment(parse_spec(with_selector), OWNER, "flash")), live)
    # The live object still holds everything `after` sets, but not its hash: the selector must go.
    assert drift.contains(live["spec"], after["spec"])
    assert drift.needs_apply(after, live)
    key = drift.APPLIED_HASH_ANNOTATION
    assert before["metadata"]["annotations"][key] != after["metadata"]["annotations"][key]
    assert drift.stamp(after) == after  # stamping is idempotent


def test_quantities_in_canonical_form_are_the_same_value() -> None:
    assert drift.contains({"cpu": "500m", "memory": "1Gi"}, {"cpu": "0.5", "memory": "1024Mi"})
    assert not drift.contains({"cpu": "500m"}, {"cpu": "1"})
    assert not drift.contains({"image": "r/s:v0.1.0-sdpa"}, {"image": "r/s:v0.1.0-flash"})
