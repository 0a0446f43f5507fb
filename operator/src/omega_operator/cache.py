"""The operator's memory between reconciles (one instance per process): locks, own writes, probe rounds.

Per OmegaVLM: a lock, our own last writes (for read-your-writes) and the last round of pod /health
results.

Owned by :class:`omega_operator.runtime.Operator`; everything in it is keyed by the OmegaVLM's
uid and dropped by :meth:`ObjectCache.forget` when the object is deleted. Nothing here survives a
restart, and nothing needs to: the decisions live in the status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omega_operator.health_report import ProbeResult
from omega_operator.read_your_writes import Applied, newest_child, own_status


@dataclass
class ObjectCache:
    """What the last reconcile of each OmegaVLM left behind, for the next one."""

    # uid -> one lock: reconciles of one object never overlap (handlers, child events, the loop).
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # uid -> the object as our last status patch returned it: a reconcile that starts with an
    # older body (the watch event of our own write not yet in) uses this status instead.
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (uid, kind) -> a child as our last apply returned it (newer than the cache until its event).
    applied: dict[tuple[str, str], Applied] = field(default_factory=dict)
    # uid -> the last round of pod /health results.
    probes: dict[str, dict[str, ProbeResult]] = field(default_factory=dict)

    def lock(self, uid: str) -> asyncio.Lock:
        """The lock of one OmegaVLM."""
        return self.locks.setdefault(uid, asyncio.Lock())

    def child(self, uid: str, kind: str, cached: dict[str, Any] | None) -> dict[str, Any] | None:
        """The copy of a child to reconcile with: the watch cache's, or our newer own write."""
        obj, entry = newest_child(cached, self.applied.get((uid, kind)))
        if entry is not None:
            self.applied[(uid, kind)] = entry
        return obj

    def status_for(self, uid: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Our last written status when it is newer than ``body``'s (else None: use the body's)."""
        return own_status(body, self.written.get(uid))

    def last_probes(self, uid: str) -> dict[str, ProbeResult] | None:
        """The last probe round of one OmegaVLM (None before its first)."""
        return self.probes.get(uid)

    def remember(
        self,
        uid: str,
        *,
        probes: dict[str, ProbeResult],
        written: dict[str, Any] | None,
        applied: Mapping[str, dict[str, Any]],
        deleted: Iterable[str],
    ) -> None:
        """Record what a reconcile used and wrote (the probe round, the status and the children)."""
        self.probes[uid] = probes
        if written is not None:
            self.written[uid] = written
        for kind, obj in applied.items():
            self.applied[(uid, kind)] = Applied(obj)
        for kind in deleted:
            self.applied.pop((uid, kind), None)

    def forget(self, uid: str) -> None:
        """Drop everything about a deleted OmegaVLM."""
        self.written.pop(uid, None)
        self.locks.pop(uid, None)
        self.probes.pop(uid, None)
        for key in [k for k in self.applied if k[0] == uid]:
            del self.applied[key]
