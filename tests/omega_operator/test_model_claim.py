"""A pvc:// model claim that attaches to one node (ReadWriteOnce) or one pod (ReadWriteOncePod)
cannot serve replicas spread over nodes: the status says so, naming the fields."""

from __future__ import annotations

from typing import Any

from omega_operator import model_claim
from omega_operator.api import parse_spec


def _pod(node: str | None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"p-{node}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}}


def _spec(minimal_spec: dict[str, Any], replicas: int, uri: str = "pvc://models/omega") -> Any:
    return parse_spec({**minimal_spec, "replicas": replicas, "model": {"name": "m", "uri": uri}})


def test_rwo_claim_with_pods_on_two_nodes_is_a_problem(minimal_spec: dict[str, Any]) -> None:
    msg = model_claim.problem(_spec(minimal_spec, 2), ["ReadWriteOnce"], [_pod("a"), _pod("b")])
    assert msg is not None
    assert "spec.model.uri pvc://models" in msg and "spec.replicas 2" in msg and "ReadOnlyMany" in msg
    assert "nodes a, b" in msg


def test_what_is_not_a_problem(minimal_spec: dict[str, Any]) -> None:
    two = [_pod("a"), _pod("b")]
    assert model_claim.problem(_spec(minimal_spec, 2), ["ReadWriteOnce"], [_pod("a"), _pod("a")]) is None
    assert model_claim.problem(_spec(minimal_spec, 2), ["ReadOnlyMany"], two) is None
    assert model_claim.problem(_spec(minimal_spec, 2), ["ReadWriteOnce", "ReadOnlyMany"], two) is None
    assert model_claim.problem(_spec(minimal_spec, 1), ["ReadWriteOnce"], two) is None
    assert model_claim.problem(_spec(minimal_spec, 2), None, two) is None  # claim not seen yet
    assert model_claim.problem(_spec(minimal_spec, 2, "file:///m"), ["ReadWriteOnce"], two) is None
    # a terminating pod (rolling update) does not count
    assert (
        model_claim.problem(_spec(minimal_spec, 2), ["ReadWriteOnce"], [_pod("a"), _pod("b", True)]) is None
    )


def test_rwop_claim_admits_one_pod_even_on_one_node(minimal_spec: dict[str, Any]) -> None:
    msg = model_claim.problem(_spec(minimal_spec, 2), ["ReadWriteOncePod"], [_pod("a"), _pod("a")])
    assert msg is not None and "one pod" in msg


def test_rwo_cache_claim_with_pods_on_two_nodes_is_a_problem(minimal_spec: dict[str, Any]) -> None:
    from omega_operator.reconcile import model_claim_of

    model = {"name": "m", "uri": "hf://org/m", "cache": {"size": "1Gi", "accessMode": "ReadWriteOnce"}}
    raw = {**minimal_spec, "replicas": 2, "model": model}
    msg = model_claim.problem(parse_spec(raw), ["ReadWriteOnce"], [_pod("a"), _pod("b")], "cap")
    assert msg is not None and msg.startswith(
        "spec.model.cache claim cap-model-cache: the claim is ReadWriteOnce"
    )
    assert "ReadWriteMany cache" in msg
    assert model_claim_of({"metadata": {"name": "cap"}, "spec": raw}) == "cap-model-cache"
    mine = {**raw, "model": {**model, "cache": {"claimName": "mine"}}}
    assert model_claim_of({"metadata": {"name": "cap"}, "spec": mine}) == "mine"
    no_cache = {**raw, "model": {"name": "m", "uri": "hf://org/m"}}
    assert model_claim_of({"metadata": {"name": "cap"}, "spec": no_cache}) is None
    assert model_claim.problem(parse_spec(no_cache), ["ReadWriteOnce"], [_pod("a"), _pod("b")], "cap") is None
