"""What the operator waits for before kopf lists the cluster's resources (``api_ready``)."""

from __future__ import annotations

from omega_operator.api_ready import PATHS, REQUIRED, missing


def _all_served() -> dict[str, set[str]]:
    return {path: {name for name, paths in REQUIRED.items() if path in paths} for path in PATHS}


def test_everything_served_is_nothing_missing() -> None:
    assert missing(_all_served()) == []


def test_a_group_answered_without_its_resources_is_missing() -> None:
    listed = _all_served()
    listed["/apis/apps/v1"] = set()  # a restarting API server: the group not registered yet
    assert missing(listed) == ["deployments"]
    assert len(missing({})) == len(REQUIRED)


def test_either_policy_version_serves_the_disruption_budgets() -> None:
    listed = _all_served()
    listed["/apis/policy/v1"] = set()  # a 1.20 API server: policy/v1beta1 only
    assert missing(listed) == []
