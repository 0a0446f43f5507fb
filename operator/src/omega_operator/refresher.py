"""The refresh loop: every OmegaVLM is reconciled again once per probe interval, jittered per object.

Each round probes the object's pods, refreshes its observed state and repairs drifted children.
At most one tick per object is queued or running: an object whose last tick has not finished
(slow probes, a full concurrency gate) gets no second one, so the backlog is bounded by the number
of objects. A tick carries the object's uid, not its body: the body is looked up when the tick
runs (``Refresher.bodies``, the index), so an update that landed while it waited is what it
reconciles (the operator re-reads it once more under the object's lock: ``runtime``).

One loop for the whole operator instead of a kopf timer or daemon per object: kopf's timers and
daemons put a finalizer on every object (an extra write each, and deletion would hang while the
operator is down); garbage collection needs none. When each object is due is :class:`Schedule`'s
business (pure: the time and the randomness come in); :class:`Refresher` runs the rounds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omega_operator import metrics

log = logging.getLogger(__name__)

Body = Mapping[str, Any]


def jittered(interval_s: float, jitter: float = 0.2, rng: random.Random | None = None) -> float:
    """``interval_s`` spread uniformly by +-``jitter`` (a fraction), so many timers do not align."""
    if interval_s <= 0:
        return 0.0
    j = min(max(jitter, 0.0), 1.0)
    r = (rng or random).uniform(1.0 - j, 1.0 + j)
    return interval_s * r


@dataclass
class Schedule:
    """When each object is next due: first at a random point of the first interval, then every
    interval spread by 10%. Objects no longer listed are forgotten."""

    interval: float
    rng: random.Random | None = None  # None: the random module's own generator
    due: dict[str, float] = field(default_factory=dict)  # uid -> monotonic time it is next due

    def due_now(self, uids: Iterable[str], now: float) -> list[str]:
        """The uids (of those listed) to refresh at ``now``; schedules their next round."""
        rng = self.rng or random
        seen: set[str] = set()
        out: list[str] = []
        for uid in uids:
            seen.add(uid)
            when = self.due.setdefault(uid, now + rng.uniform(0.0, self.interval))
            if now >= when:
                self.due[uid] = now + jittered(self.interval, 0.1, self.rng)
                out.append(uid)
        for uid in set(self.due) - seen:
            del self.due[uid]
        return out


class Refresher:
    """Runs :class:`Schedule`'s rounds: ``reconcile(body)`` for each object due, at most
    ``concurrency`` at once; a failure is logged and retried at the object's next round."""

    def __init__(
        self,
        interval: float,
        bodies: Callable[[], Iterable[Body]],
        reconcile: Callable[[Body], Awaitable[None]],
        concurrency: int = 16,
    ) -> None:
        self.schedule = Schedule(interval)
        self.bodies = bodies
        self.reconcile = reconcile
        self._gate = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self.in_flight: set[str] = set()  # uids with a tick queued or running
        self.started: dict[str, float] = {}  # uid -> monotonic start of its last refresh

    def _body(self, uid: str) -> Body | None:
        """The object's body as the index has it now (None once it is gone)."""
        return next((b for b in self.bodies() if str((b.get("metadata") or {}).get("uid")) == uid), None)

    async def _tick(self, uid: str) -> None:
        try:
            async with self._gate:
                body = self._body(uid)  # read when the tick runs, not when it was queued
                if body is None:
                    self.started.pop(uid, None)
                    return
                self._observe_start(uid, time.monotonic())
                try:
                    await self.reconcile(body)
                except Exception as exc:  # the next round retries; one bad object must not stop the loop
                    log.warning("refresh of %s failed: %s", (body.get("metadata") or {}).get("name"), exc)
        finally:
            self.in_flight.discard(uid)

    def _observe_start(self, uid: str, now: float) -> None:
        """Record the time since the object's last refresh started (its probe round, in
        ``omega_operator_refresh_period_seconds``): the interval when nothing lags."""
        last = self.started.get(uid)
        self.started[uid] = now
        if last is not None:
            metrics.REFRESH_PERIOD.observe(now - last)

    def round(self, now: float) -> list[asyncio.Task[None]]:
        """Start the reconciles due at ``now`` (in the background), one per object at most in flight;
        returns the tasks started."""
        by_uid = {str((body.get("metadata") or {}).get("uid")): body for body in self.bodies()}
        tasks = []
        for uid in self.schedule.due_now(by_uid, now):
            if uid in self.in_flight:
                continue  # its last tick is still queued or running: no pile-up
            self.in_flight.add(uid)
            task = asyncio.create_task(self._tick(uid))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            tasks.append(task)
        return tasks

    async def run(self) -> None:
        """Forever: a round, then a short sleep (a fraction of the interval)."""
        while True:
            self.round(time.monotonic())
            await asyncio.sleep(min(0.5, self.schedule.interval / 4))
