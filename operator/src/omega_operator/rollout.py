"""The Deployment's rollout strategy: maxSurge 0 for spec changes, surge-first while a rollback replaces
pods that still serve. Pure.

Spec changes (a new image, new runtime knobs) roll with ``maxSurge: 0, maxUnavailable: 1``: GPUs are
scarce, so a pod goes before its replacement starts (no second GPU per replica is needed). A
rollback to sdpa is different: the flash pods it replaces often already serve, on sdpa in the same
process (the server fell back by itself), and taking them down first would cause the outage the
fallback is there to avoid (``replicas: 1``: down for a full model load). So while the Deployment
still has pods of the flash image the fallback moved away from:

* some of them are Ready: ``maxSurge: 1`` and ``maxUnavailable`` = the number of those pods that are
  not Ready. One new pod starts (where a GPU is free), and an old Ready pod goes only once a new one
  is Ready; old pods that are not Ready go at once. The Ready count never drops below its value
  before the rollback. With no free GPU the new pod waits (Unschedulable) and the old pods keep
  serving: ``Progressing`` says ``RollbackWaitingForCapacity``.
* none is Ready (crash-looping, still loading): ``maxSurge: 0`` and ``maxUnavailable`` = all of
  them: they are replaced at once (a surge pod would need a GPU the broken pods hold).

Flash pods moved off the nodes flash-attn failed on (``fallback.nodes``: a required node affinity
``NotIn``, a template change) roll by the same rule, the pods on those nodes counting as the old
ones: they mostly serve sdpa in process.

Once no pod of the flash image (or on an excluded node) is left the strategy is the normal one again (one more write of the
Deployment, no new ReplicaSet: the strategy is not part of the pod template).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omega_operator.fallback import SDPA, Decision, PodView

#: Spec changes: a pod goes before its replacement starts (no GPU is needed twice).
NORMAL: dict[str, Any] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def strategy(decision: Decision, pods: Iterable[PodView]) -> dict[str, Any]:
    """The Deployment's ``spec.strategy`` for this decision and these pods (see the module doc)."""
    record = decision.fallback
    excluded = set(decision.excluded_nodes)
    if excluded:  # flash pods move off the nodes flash failed on: the same surge-first rule
        old = [p for p in pods if not p.deleting and p.node in excluded]
    elif record is None or decision.variant != "sdpa":
        return NORMAL
    else:
        old = [p for p in pods if not p.deleting and _is_old(p, record.from_image)]
    if not old:
        return NORMAL
    not_ready = sum(1 for p in old if not p.ready)
    if not_ready == len(old):
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": not_ready}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": not_ready}}


def waiting_for_capacity(decision: Decision, pods: Iterable[PodView]) -> int:
    """How many pods of the flash image keep serving while the rollback's new pod cannot be scheduled
    (0 when the rollback is not waiting for a GPU)."""
    record = decision.fallback
    if record is None or decision.variant != "sdpa":
        return 0
    live = [p for p in pods if not p.deleting]
    serving = sum(1 for p in live if _is_old(p, record.from_image) and p.ready)
    pending = any(p.unschedulable and not _is_old(p, record.from_image) for p in live)
    return serving if pending else 0


def _is_old(pod: PodView, from_image: str) -> bool:
    """A pod of the flash image the rollback moves away from (not a new sdpa pod)."""
    return pod.image == from_image and pod.attn_impl != SDPA
