"""Whether this operator replica is the active peer: kopf's peering rule, for the refresh loop's gate.

With peering (``OMEGA_OPERATOR_PEERING``) kopf pauses its own handlers while another live peer has a
higher or the same priority, but the refresh loop (:mod:`omega_operator.refresher`) is ours, not kopf's:
without this gate a paused replica keeps reconciling (probing, rolling back, writing status) next to the
active one. :class:`PeeringGate` reads the peering object(s) kopf keeps — the same ``status`` map of
``identity -> {priority, lifetime, lastseen}`` kopf reads — once per interval and applies kopf's rule
(:func:`blocking_peers`); the refresh loop sees no objects while it is paused.

Each process gets an identity and a priority of its own (:func:`own_peer`): kopf pauses every replica
when two have the same priority, so the default priority is random per process, not one shared value.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

log = logging.getLogger(__name__)

PEERING_GROUP_VERSION = "kopf.dev/v1"


@dataclass(frozen=True)
class Peer:
    """This process as a kopf peer: the identity and priority passed to ``kopf.run``."""

    identity: str
    priority: int


def own_peer(priority: int | None) -> Peer:
    """This process's identity (the pod name from ``POD_ID`` when set, as kopf does, plus the pid) and
    priority (``priority``, or random in 1..2**30 when None)."""
    base = os.environ.get("POD_ID") or socket.gethostname()
    prio = priority if priority is not None else random.SystemRandom().randint(1, 2**30)
    return Peer(identity=f"{base}/{os.getpid()}", priority=prio)


def blocking_peers(status: Mapping[str, Any], me: Peer, now: datetime) -> list[str]:
    """The live peers (other than ``me``) with a priority >= ours: while any is listed, kopf pauses."""
    out = []
    for identity, info in (status or {}).items():
        if identity == me.identity or not isinstance(info, Mapping):
            continue
        try:
            lastseen = datetime.fromisoformat(str(info.get("lastseen")))
            if lastseen.tzinfo is None:
                lastseen = lastseen.replace(tzinfo=UTC)
            alive = lastseen + timedelta(seconds=int(info.get("lifetime", 60))) > now
            priority = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if alive and priority >= me.priority:
            out.append(identity)
    return out


class Lister(Protocol):
    """The one method of ``omega_operator.kube.Kube`` used here."""

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None
    ) -> dict[str, Any]: ...


class PeeringGate:
    """``paused`` is True until the peering object(s) were read and whenever a peer blocks us."""

    def __init__(self, kube: Lister, name: str, namespaces: list[str], me: Peer, interval_s: float) -> None:
        self.kube = kube
        self.name = name
        self.namespaces = namespaces  # empty: cluster-wide (ClusterKopfPeering)
        self.me = me
        self.interval_s = interval_s
        self.paused = True

    def _paths(self) -> list[str]:
        if not self.namespaces:
            return [f"/apis/{PEERING_GROUP_VERSION}/clusterkopfpeerings"]
        if any(ch in ns for ns in self.namespaces for ch in "*?["):  # globs: every namespace's object
            return [f"/apis/{PEERING_GROUP_VERSION}/kopfpeerings"]
        return [f"/apis/{PEERING_GROUP_VERSION}/namespaces/{ns}/kopfpeerings" for ns in self.namespaces]

    async def check(self) -> bool:
        """Read the peering object(s) (a list, which the chart's RBAC grants) and set ``paused``:
        blocked by a peer, or an object (or kopf's CRD) missing — kopf pauses then too."""
        blockers: list[str] = []
        try:
            for path in self._paths():
                items = (
                    await self.kube.request(
                        "GET", path, params={"fieldSelector": f"metadata.name={self.name}"}
                    )
                )["items"]
                if not items:
                    blockers.append(f"no peering object {self.name} at {path}")
                for item in items:
                    blockers.extend(blocking_peers(item.get("status") or {}, self.me, datetime.now(UTC)))
        except Exception as exc:  # unknown: stay as we are, read again next interval
            log.info(
                "peering object not read (%s); refresh loop stays %s", exc, "paused" if self.paused else "on"
            )
            return self.paused
        paused = bool(blockers)
        if paused != self.paused:
            log.info(
                "refresh loop %s (peers: %s)",
                "paused" if paused else "resumed",
                blockers or "none ahead of us",
            )
        self.paused = paused
        return paused

    async def run(self) -> None:
        """Forever: check, then sleep an interval."""
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)
