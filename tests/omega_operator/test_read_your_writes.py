"""Read-your-writes: our own last write wins over an older watch-cache copy, until the cache shows it;
and the object cache that keeps those writes between reconciles."""

from __future__ import annotations

import asyncio
from typing import Any

from omega_operator.cache import ObjectCache
from omega_operator.health_report import HealthReport, ProbeOutcome, ProbeResult
from omega_operator.read_your_writes import Applied, newest_child, own_status, resource_version


def obj(rv: str | None, **status: Any) -> dict[str, Any]:
    meta = {"name": "x"} if rv is None else {"name": "x", "resourceVersion": rv}
    return {"metadata": meta, "status": status}


def test_resource_version_is_a_number_or_zero() -> None:
    assert resource_version(obj("42")) == 42
    assert resource_version(obj(None)) == 0
    assert resource_version(obj("not-a-number")) == 0


def test_our_newer_status_patch_wins_over_an_older_body() -> None:
    written = obj("12", phase="Ready")
    got = own_status(obj("11", phase="Pending"), written)
    assert got == {"phase": "Ready"} and got is not written["status"]  # a copy
    assert own_status(obj("12", phase="Pending"), written) is None  # the body has caught up
    assert own_status(obj("13"), written) is None
    assert own_status(obj("11"), None) is None


def test_a_child_follows_our_apply_until_the_cache_shows_it_then_the_cache() -> None:
    mine = Applied(obj("20", replicas=2))
    # the cache still has the older copy: ours
    got, rec = newest_child(obj("19", replicas=1), mine)
    assert got is mine.obj and rec == mine
    # the cache is not there yet at all (just created): ours
    got, rec = newest_child(None, mine)
    assert got is mine.obj and rec == mine and not rec.seen
    # the cache has caught up: the cache, and the record says it was seen
    cached = obj("21", replicas=2)
    got, rec = newest_child(cached, mine)
    assert got is cached and rec == Applied(mine.obj, seen=True)
    # once seen, a child missing from the cache was deleted by someone else: recreate it
    assert rec is not None
    got, rec2 = newest_child(None, rec)
    assert got is None and rec2 == rec
    # nothing of ours: the cache, whatever it has
    assert newest_child(cached, None) == (cached, None)
    assert newest_child(None, None) == (None, None)


def test_the_object_cache_keeps_one_objects_writes_and_forgets_them() -> None:
    cache = ObjectCache()
    probes = {"p": ProbeResult("p", ProbeOutcome.REPORT, 200, report=HealthReport(ready=True))}
    dep = obj("30")
    cache.remember(
        "u1", probes=probes, written=obj("31", phase="Ready"), applied={"Deployment": dep}, deleted=[]
    )
    assert cache.last_probes("u1") is probes and cache.last_probes("u2") is None
    assert cache.status_for("u1", obj("29")) == {"phase": "Ready"}
    assert cache.child("u1", "Deployment", obj("29")) is dep  # the watch event is not in yet
    assert cache.child("u1", "Deployment", None) is dep
    newer = obj("32")
    assert cache.child("u1", "Deployment", newer) is newer
    assert cache.child("u1", "Deployment", None) is None  # seen, then gone: recreate
    cache.remember("u1", probes={}, written=None, applied={}, deleted=["Deployment"])
    assert ("u1", "Deployment") not in cache.applied and cache.status_for("u1", obj("29")) is not None
    assert cache.lock("u1") is cache.lock("u1") and cache.lock("u1") is not cache.lock("u2")
    cache.forget("u1")
    assert cache.last_probes("u1") is None and cache.status_for("u1", obj("1")) is None
    assert "u1" not in cache.locks and cache.lock("u2") is cache.locks["u2"]


def test_two_caches_share_nothing() -> None:
    """The cache is an instance (the operator owns one), not process-global state."""
    a, b = ObjectCache(), ObjectCache()
    a.remember("u", probes={}, written=obj("1"), applied={"Service": obj("1")}, deleted=[])
    assert b.status_for("u", obj("0")) is None and not b.applied

    async def locked() -> bool:
        async with a.lock("u"):
            return not b.lock("u").locked()

    assert asyncio.run(locked())
