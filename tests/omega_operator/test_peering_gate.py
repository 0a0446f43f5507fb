"""The refresh loop's peering gate: kopf's rule (a live peer of higher or equal priority pauses us),
applied to the peering object's status as kopf writes it, and read through a list request."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from omega_operator.peering_gate import Peer, PeeringGate, blocking_peers, own_peer

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
ME = Peer(identity="op-a/1", priority=10)


def peer(priority: int, seen_s_ago: float, lifetime: int = 60) -> dict[str, Any]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seen_s_ago)).isoformat(),
    }


def test_a_live_peer_of_higher_or_equal_priority_blocks_a_lower_or_dead_one_does_not() -> None:
    status = {
        "op-a/1": peer(10, 0),  # ourselves
        "higher": peer(20, 5),
        "same": peer(10, 5),
        "lower": peer(5, 5),
        "dead-higher": peer(99, 61),
        "garbage": {"priority": "x"},
    }
    assert sorted(blocking_peers(status, ME, NOW)) == ["higher", "same"]
    assert blocking_peers({"lower": peer(5, 0), "dead": peer(50, 120)}, ME, NOW) == []


def test_own_peer_takes_the_given_priority_or_a_random_one_per_process(monkeypatch: Any) -> None:
    monkeypatch.setenv("POD_ID", "operator-7d9-abc")
    fixed = own_peer(42)
    assert fixed.priority == 42 and fixed.identity.startswith("operator-7d9-abc/")
    assert len({own_peer(None).priority for _ in range(20)}) > 1


class FakeKube:
    def __init__(self, items: list[dict[str, Any]] | Exception) -> None:
        self.items = items
        self.calls: list[tuple[str, dict[str, str] | None]] = []

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        self.calls.append((path, params))
        if isinstance(self.items, Exception):
            raise self.items
        return {"items": self.items}


def test_the_gate_starts_paused_opens_when_no_peer_blocks_and_keeps_its_state_on_errors() -> None:
    live_rival = {"status": {"rival": {**peer(99, 0), "lastseen": datetime.now(UTC).isoformat()}}}
    kube = FakeKube([{"status": {}}])
    gate = PeeringGate(kube, "omega-vlm", ["team-a"], ME, 1.0)
    assert gate.paused
    assert asyncio.run(gate.check()) is False
    assert kube.calls == [
        ("/apis/kopf.dev/v1/namespaces/team-a/kopfpeerings", {"fieldSelector": "metadata.name=omega-vlm"})
    ]
    kube.items = [live_rival]
    assert asyncio.run(gate.check()) is True
    kube.items = RuntimeError("apiserver down")
    assert asyncio.run(gate.check()) is True  # unchanged
    kube.items = []  # no peering object: kopf pauses, so do we
    gate.paused = False
    assert asyncio.run(gate.check()) is True


def test_cluster_wide_and_glob_namespaces_read_the_right_objects() -> None:
    kube = FakeKube([{"status": {}}])
    asyncio.run(PeeringGate(kube, "p", [], ME, 1.0).check())
    asyncio.run(PeeringGate(kube, "p", ["ml-*"], ME, 1.0).check())
    assert [c[0] for c in kube.calls] == [
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        "/apis/kopf.dev/v1/kopfpeerings",
    ]
