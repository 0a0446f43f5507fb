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


def _body(uid: str, generation: int, image: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": uid, "generation": generation}, "spec": {"image": image}}


def test_an_update_landing_while_a_tick_is_queued_wins_and_ticks_do_not_pile_up() -> None:
    """Issue 12.5: the tick waits behind a full gate; the spec changes meanwhile; the tick reconciles
    the new spec (the body is read when it runs), and a second round queues no second tick."""
    index = {"u": _body("u", 1, "old")}
    seen: list[str] = []
    release = asyncio.Event()

    async def reconcile(body: Mapping[str, Any]) -> None:
        seen.append(body["spec"]["image"])

    async def main() -> None:
        r = Refresher(1.0, lambda: list(index.values()), reconcile, concurrency=1)
        r.schedule.rng = random.Random(0)
        r.schedule.due_now(["u"], 0.0)

        async def hold_the_gate() -> None:
            async with r._gate:
                await release.wait()

        blocker = asyncio.create_task(hold_the_gate())
        await asyncio.sleep(0)
        first = r.round(1.0)
        assert len(first) == 1 and r.in_flight == {"u"}
        # Due again while the first tick still waits: no second tick.
        assert r.round(5.0) == [] and r.round(9.0) == []
        index["u"] = _body("u", 2, "new")  # the update lands while the tick is queued
        release.set()
        await asyncio.gather(blocker, *first)
        assert seen == ["new"]  # the new spec won; the old one never ran
        assert r.in_flight == set()
        assert len(r.round(20.0)) == 1  # and the object ticks again later

    asyncio.run(main())


def test_a_tick_for_an_object_that_is_gone_does_nothing() -> None:
    index = {"u": _body("u", 1, "old")}
    seen: list[str] = []

    async def reconcile(body: Mapping[str, Any]) -> None:
        seen.append(body["spec"]["image"])

    async def main() -> None:
        r = Refresher(1.0, lambda: list(index.values()), reconcile, concurrency=1)
        r.schedule.due_now(["u"], 0.0)
        tasks = r.round(2.0)
        del index["u"]
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert seen == []


def test_the_body_under_the_lock_is_the_index_copy_and_an_older_generation_is_skipped() -> None:
    from omega_operator.runtime import current_body

    passed = _body("u", 1, "old")
    assert current_body(passed, [_body("u", 2, "new")]) is None  # stale tick: skipped
    assert (
        current_body(passed, [_body("u", 1, "same-gen-newer-copy")])["spec"]["image"] == "same-gen-newer-copy"
    )  # type: ignore[index]
    newer = _body("u", 3, "handler")
    assert current_body(newer, [_body("u", 2, "lagging")]) is newer  # the index lags: keep it
    assert current_body(passed, []) is passed
    assert current_body(passed, [_body("other-uid", 9, "x")]) is passed


def test_the_time_between_two_refreshes_of_an_object_is_observed() -> None:
    from prometheus_client import REGISTRY

    def count() -> float:
        return REGISTRY.get_sample_value("omega_operator_refresh_period_seconds_count") or 0.0

    async def noop(body: Mapping[str, Any]) -> None:
        return None

    r = Refresher(1.0, lambda: [{"metadata": {"uid": "a"}}], noop)
    before = count()
    r._observe_start("a", 100.0)  # the first refresh: nothing to compare with
    assert count() == before
    r._observe_start("a", 101.5)
    assert count() == before + 1
    assert r.started["a"] == 101.5
    asyncio.run(_gone(r))
    assert "a" not in r.started


async def _gone(r: Refresher) -> None:
    """A tick for an object no longer listed forgets when it last started."""
    r.bodies = lambda: []
    await r._tick("a")
