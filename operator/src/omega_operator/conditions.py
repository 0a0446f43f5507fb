"""Status conditions (metav1.Condition shape): their types and reasons, and setting one. Pure.

`lastTransitionTime` changes only when a condition's status flips; reason, message and
observedGeneration may change without touching it. The time comes in (``now``, as :func:`rfc3339`
writes it): nothing here reads the clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

# Condition types.
READY = "Ready"
PROGRESSING = "Progressing"
SCHEDULABLE = "Schedulable"
FLASH_DEGRADED = "FlashAttentionDegraded"
ORDER = (READY, PROGRESSING, SCHEDULABLE, FLASH_DEGRADED)

# Reasons (CamelCase constants). The pod findings' and FlashAttentionDegraded's reasons are
# omega_operator.fallback.Reason.
INVALID_SPEC = "InvalidSpec"
ALL_REPLICAS_READY = "AllReplicasReady"
REPLICAS_NOT_READY = "ReplicasNotReady"
SCALED_TO_ZERO = "ScaledToZero"
ROLLING_OUT = "RollingOut"
ROLLOUT_COMPLETE = "RolloutComplete"
ROLLOUT_STALLED = "ProgressDeadlineExceeded"
SCHEDULED = "Scheduled"
UNSCHEDULABLE = "Unschedulable"

Status = Literal["True", "False", "Unknown"]


def rfc3339(moment: datetime) -> str:
    """A time as Kubernetes writes it (UTC, second precision, Z suffix)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    """Whether the condition of that type exists with status True."""
    cond = get(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Return a new list with that condition set (input untouched), in a stable order.

    ``now`` (RFC 3339) becomes its ``lastTransitionTime`` when the status flips (or it is new)."""
    old = get(conditions, type_)
    if old is not None and old.get("status") == status and old.get("lastTransitionTime"):
        transition = old["lastTransitionTime"]
    else:
        transition = now
    new = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }
    if generation is None:
        del new["observedGeneration"]
    rest = [dict(c) for c in conditions or [] if c.get("type") != type_]
    return sort_conditions([*rest, new])


def sort_conditions(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Known types first in a fixed order, then the rest by type (stable output, no spurious diffs)."""

    def key(c: dict[str, Any]) -> tuple[int, str]:
        t = c.get("type", "")
        return (ORDER.index(t) if t in ORDER else len(ORDER), t)

    return sorted(conditions, key=key)


def flipped(old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | None, type_: str) -> bool:
    """Whether the status or reason of that condition type differs between two lists (a transition)."""
    a, b = get(old, type_), get(new, type_)
    return (a or {}).get("status") != (b or {}).get("status") or (a or {}).get("reason") != (b or {}).get(
        "reason"
    )
