"""The rollback's writes: the record into the status first; which Deployment write is THE rollback.

The record is written before the Deployment moves; the one Deployment write that is the rollback
is recognised for its Event and metric.

Why status first: the decision lives in ``status.attention.fallback``. When the operator dies
after moving the Deployment to sdpa but before recording why, the next operator sees sdpa pods,
no record and no flash evidence, and moves the Deployment back to flash: a second rollback follows.
Writing the record before the Deployment makes "exactly one rollback" hold across a crash at any
point: a crash after the record means the next reconcile builds sdpa from the record.

Wiring in :func:`omega_operator.reconcile.reconcile` (after the decision, before the children are
applied)::

    recorded = await rollback.persist_fallback(kube, ns, name, decision)
    if recorded:
        old["attention"] = {**(old.get("attention") or {}), **recorded}
    ...  # apply the children (Deployment built with decision.variant)
    if rollback.is_rollback_write(decision, observed.deployment, "Deployment" in res.applied):
        metrics.count_rollback(decision.reason, scope="fleet")
        await event("Warning", fallback.EVENT_REASON, decision.message)

The crash between the two writes is tested end to end (tests/e2e/test_fallback_restart.py) by a
test-only entry point, ``tests/e2e/failpoint_operator.py``, which wraps :func:`persist_fallback` in
the operator process it starts; production code has no crash point and no switch for one.
"""

from __future__ import annotations

from typing import Any, Protocol

from omega_operator import builders as b
from omega_operator.fallback import Action, Decision


class StatusWriter(Protocol):
    """The one method of ``omega_operator.kube.Kube`` used here."""

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


async def persist_fallback(
    kube: StatusWriter, namespace: str, name: str, decision: Decision
) -> dict[str, Any] | None:
    """On a ROLLBACK decision, merge-patch ``status.attention.fallback`` (and ``retryFlash``); on an
    EXCLUDE decision that lists new nodes, ``status.attention.badNodes``; both BEFORE
    the Deployment is written. Returns the ``status.attention`` keys written (merge them into the
    caller's copy of the old status so its later diff does not send them again), or None when the
    decision is not a rollback (nothing written)."""
    if decision.action is Action.EXCLUDE and decision.new_bad_nodes:
        # the nodes go into the status before the Deployment keeps the pods off them
        listed: dict[str, Any] = {"badNodes": [n.to_status() for n in decision.bad_nodes]}
        await kube.patch_status(namespace, name, {"attention": listed})
        return listed
    if decision.action is not Action.ROLLBACK or decision.fallback is None:
        return None
    written: dict[str, Any] = {"fallback": decision.fallback.to_status()}
    if decision.retry_flash is not None:
        written["retryFlash"] = decision.retry_flash
    await kube.patch_status(namespace, name, {"attention": written})
    return written


def is_rollback_write(decision: Decision, before: dict[str, Any] | None, applied: bool) -> bool:
    """Whether this reconcile's Deployment write is THE rollback: a fallback record is in force and
    the Deployment moved from the flash variant to sdpa. Post the ``FlashAttentionFallback`` Event
    and count ``omega_operator_fallbacks_total`` on this, not on ``Action.ROLLBACK``: after a crash
    between the status record and the Deployment write, the next process sees ``Action.KEEP`` (the
    record exists) but still does the write, and must still announce it — exactly once."""
    if not applied or decision.fallback is None or decision.variant != "sdpa" or before is None:
        return False
    meta = before.get("metadata") or {}
    if (meta.get("labels") or {}).get(b.VARIANT_LABEL) == "flash":
        return True
    containers = ((before.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    return any(c.get("image") == decision.fallback.from_image for c in containers)
