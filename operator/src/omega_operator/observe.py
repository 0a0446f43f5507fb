"""Glue between the fallback decision and the reconcile: the spec adapter and the status-first write
of a rollback. (The periodic probe/refresh loop is ``handlers.refresh_loop``.)

Why status first: the decision lives in ``status.attention.fallback``. When the operator dies
after moving the Deployment to sdpa but before recording why, the next operator sees sdpa pods,
no record and no flash evidence, and moves the Deployment back to flash: a second rollback follows.
Writing the record before the Deployment makes "exactly one rollback" hold across a crash at any
point: a crash after the record means the next reconcile builds sdpa from the record.

Wiring in ``reconcile._reconcile`` (after the decision, before the children are applied)::

    recorded = await observe.persist_fallback(kube, ns, name, decision)
    if recorded:
        old["attention"] = {**(old.get("attention") or {}), **recorded}
    ...  # apply the children (Deployment built with observe.variant_of(decision))
    if observe.is_rollback_write(decision, observed.deployment, "Deployment" in res.applied):
        metrics.FALLBACKS.labels(decision.reason).inc()
        await event("Warning", fallback.EVENT_REASON, decision.message)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

from omega_operator import builders as b
from omega_operator.api.models import OmegaVLMSpec
from omega_operator.fallback import Action, Decision, FallbackSpec

log = logging.getLogger(__name__)

#: Test-only crash point (the e2e "operator killed between detection and rollback" test):
#: ``OMEGA_OPERATOR_FAILPOINT=after-fallback-recorded`` ends the process right after the
#: fallback record is in the status, before the Deployment moves to sdpa.
FAILPOINT_ENV = "OMEGA_OPERATOR_FAILPOINT"
AFTER_FALLBACK_RECORDED = "after-fallback-recorded"
FAILPOINT_EXIT_CODE = 86


class StatusWriter(Protocol):
    """The one method of ``omega_operator.kube.Kube`` used here."""

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


def fallback_spec(spec: OmegaVLMSpec) -> FallbackSpec:
    """The decision's view of a spec, with the builders' defaults and image rule (one source)."""
    return FallbackSpec(
        attention=b.attention(spec),
        flash_image=b.flash_image(spec) or "",
        sdpa_image=b.sdpa_image(spec) or "",
        enabled=b.fallback_enabled(spec),
        crash_loop_restarts=b.crash_loop_restarts(spec),
    )


def variant_of(decision: Decision) -> str:
    """The image variant the Deployment must run for this decision: ``flash`` or ``sdpa``."""
    return "sdpa" if decision.attention == "sdpa" else "flash"


async def persist_fallback(
    kube: StatusWriter, namespace: str, name: str, decision: Decision
) -> dict[str, Any] | None:
    """On a ROLLBACK decision, merge-patch ``status.attention.fallback`` (and ``retryFlash``) BEFORE
    the Deployment is written. Returns the ``status.attention`` keys written (merge them into the
    caller's copy of the old status so its later diff does not send them again), or None when the
    decision is not a rollback (nothing written)."""
    if decision.action is not Action.ROLLBACK or decision.fallback is None:
        return None
    written: dict[str, Any] = {"fallback": decision.fallback.to_status()}
    if decision.retry_flash is not None:
        written["retryFlash"] = decision.retry_flash
    await kube.patch_status(namespace, name, {"attention": written})
    if os.environ.get(FAILPOINT_ENV) == AFTER_FALLBACK_RECORDED:
        log.error("failpoint %s: exiting before the Deployment write", AFTER_FALLBACK_RECORDED)
        logging.shutdown()
        os._exit(FAILPOINT_EXIT_CODE)
    return written


def is_rollback_write(decision: Decision, before: dict[str, Any] | None, applied: bool) -> bool:
    """Whether this reconcile's Deployment write is THE rollback: a fallback record is in force and
    the Deployment moved from the flash variant to sdpa. Post the ``FlashAttentionFallback`` Event
    and count ``omega_operator_fallbacks_total`` on this, not on ``Action.ROLLBACK``: after a crash
    between the status record and the Deployment write, the next process sees ``Action.KEEP`` (the
    record exists) but still does the write, and must still announce it — exactly once."""
    if not applied or decision.fallback is None or variant_of(decision) != "sdpa" or before is None:
        return False
    meta = before.get("metadata") or {}
    if (meta.get("labels") or {}).get(b.VARIANT_LABEL) == "flash":
        return True
    containers = ((before.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    return any(c.get("image") == decision.fallback.from_image for c in containers)
