"""The refresh loop: when each object is due (Schedule), and a round against real asyncio tasks."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from omega_operator.refresher import Refresher, Schedule, jittered


def test_jittered_stays_in_bounds_and_spreads() -> None:
    rng = random.Random(7)
    vals = [jittered(10.0, 0.2, rng) for _ in range(200)]
    assert all(8.0 <= v <= 12.0 for v in vals)
    assert max(vals) - min(vals) > 2.0
    assert jittered(0) == 0.0


def test_first_round_falls_inside_the_first_interval_then_every_interval() -> None:
    s = Schedule(10.0, rng=random.Random(3))
    uids = [f"u{i}" for i in range(50)]
    assert s.due_now(uids, 0.0) == []  # nobody at once: each at its own point of the first interval
    first = dict(s.due)
    assert all(0.0 <= t <= 10.0 for t in first.values())
    assert max(first.values()) - min(first.values()) > 5.0  # spread, not all at once
    # Each object comes up once when its time has come, then again about one interval later.
    fired = s.due_now(uids, 10.0)
    assert sorted(fired) == sorted(uids)
    assert all(10.0 + 9.0 <= s.due[u] <= 10.0 + 11.0 for u in uids)
    assert s.due_now(uids, 12.0) == []


def test_an_object_that_is_gone_is_forgotten() -> None:
    s = Schedule(1.0, rng=random.Random(1))
    s.due_now(["a", "b"], 0.0)
    s.due_now(["a"], 0.5)
    assert set(s.due) == {"a"}


def test_a_round_reconciles_what_is_due_and_a_failure_does_not_stop_the_others() -> None:
    bodies = [{"metadata": {"uid": u, "name": u}} for u in ("ok", "bad", "ok2")]
    done: list[str] = []

    async def reconcile(body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        if name == "bad":
            raise RuntimeError("boom")
        done.append(name)

    async def main() -> None:
        r = Refresher(1.0, lambda: bodies, reconcile, concurrency=1)
        r.schedule.rng = random.Random(0)
        assert r.round(0.0) == []
        tasks = r.round(1.0)  # every first run falls inside the first interval
        assert len(tasks) == 3
        await asyncio.gather(*tasks)
        assert r.round(1.0) == []  # not due again until about one interval later

    asyncio.run(main())
    assert sorted(done) == ["ok", "ok2"]
