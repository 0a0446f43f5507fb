"""The fault harness names the Deployment spec fields each new generation changed."""

from __future__ import annotations

from bench.reliability.faults import _changed_paths


def test_changed_paths_names_the_fields() -> None:
    old = {"replicas": 1, "template": {"spec": {"containers": [{"image": "a", "env": [1]}]}}}
    new = {
        "replicas": 1,
        "template": {"spec": {"containers": [{"image": "b", "env": [1, 2]}]}},
        "paused": True,
    }
    assert _changed_paths(old, new) == [
        "spec.paused",
        "spec.template.spec.containers[0].env",
        "spec.template.spec.containers[0].image",
    ]
    assert _changed_paths(old, old) == []
