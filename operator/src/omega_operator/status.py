"""Pure status computation: observed Deployment + the fallback decision -> the OmegaVLM's status.

The pod findings and the flash decision come from `omega_operator.fallback` (one classifier of
pod trouble); :func:`verdict` takes what the status needs from a decision, and :func:`compute`
turns it and the Deployment's counters into the status fields and the Ready / Progressing /
Schedulable / FlashAttentionDegraded conditions. The time comes in as ``now``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from omega_operator import builders as b
from omega_operator import conditions as c
from omega_operator.api.models import OmegaVLMSpec
from omega_operator.fallback import Action, Decision, Reason
from omega_operator.health_probed import HEALTH_PROBED, Probed

#: Progressing reason while a rollback's new pod waits for a free GPU and the old pods keep serving.
ROLLBACK_WAITING = "RollbackWaitingForCapacity"
#: Ready's reason (True: the kubelet says the pods are ready) and FlashAttentionDegraded's (Unknown)
#: while some running pods have not answered /health (HealthProbed False).
HEALTH_NOT_PROBED = "HealthNotProbed"


@dataclass(frozen=True)
class Problem:
    """A non-flash problem seen on a pod (reason is a CamelCase constant)."""

    reason: str
    message: str
    pod: str | None = None


@dataclass(frozen=True)
class FlashState:
    """The FlashAttentionDegraded condition as decided, and whether it blocks (fallback disabled)."""

    degraded: bool
    reason: str
    message: str
    rolled_back: bool = False  # a fallback record is in force: running sdpa instead of flash
    unhandled: bool = False  # flash failed and fallback.enabled is false: phase Degraded


@dataclass(frozen=True)
class Verdict:
    """What one fallback decision puts into the status (the inputs of :func:`compute`)."""

    attention: dict[str, Any]  # status.attention as decided this round
    problems: list[Problem]  # non-flash pod problems, most severe first
    flash: FlashState


def verdict(spec: OmegaVLMSpec, decision: Decision) -> Verdict:
    """status.attention (the spec's request plus the decision's non-empty keys), the pods' non-flash
    problems and the FlashAttentionDegraded verdict of one decision."""
    attention: dict[str, Any] = {"requested": b.attention(spec)}
    for key, value in decision.status_attention().items():
        if value not in (None, [], {}):
            attention[key] = value
    return Verdict(
        attention=attention,
        problems=[Problem(str(f.reason), f.message, f.pod) for f in decision.problems],
        flash=FlashState(
            degraded=decision.condition_status,
            reason=str(decision.reason),
            message=decision.message,
            rolled_back=decision.fallback is not None and decision.variant == "sdpa",
            unhandled=decision.action is Action.DEGRADED,
        ),
    )


def compute(
    *,
    spec: OmegaVLMSpec,
    generation: int | None,
    old: dict[str, Any] | None,
    attention: dict[str, Any],
    variant: str,
    image: str,
    deployment: dict[str, Any] | None,
    problems: list[Problem],
    flash: FlashState,
    now: str,
    name: str | None = None,
    waiting_for_capacity: int = 0,
    probed: Probed | None = None,
) -> dict[str, Any]:
    """The full new status of a valid OmegaVLM.

    `waiting_for_capacity`: pods of the flash image that keep serving (sdpa in process) while the
    rollback's new pod waits for a free GPU (``rollout.waiting_for_capacity``). `probed`: the
    HealthProbed verdict (``health_probed``; the condition is left out without one).

    `attention` is status.attention as decided this round; `problems` are the non-flash pod
    problems, most severe first (Unschedulable first); `flash` is the fallback decision's verdict;
    `now` (RFC 3339) stamps the conditions that flip; `name` (the OmegaVLM's) gives
    status.selector, the pods' label selector that the scale subresource hands to autoscalers.
    """
    old = old or {}
    conds = old.get("conditions") or []
    desired = b.replicas(spec)
    dstatus = (deployment or {}).get("status") or {}
    dmeta = (deployment or {}).get("metadata") or {}
    total = int(dstatus.get("replicas") or 0)
    ready = int(dstatus.get("readyReplicas") or 0)
    updated = int(dstatus.get("updatedReplicas") or 0)
    rolled_out = (
        deployment is not None
        and int(dstatus.get("observedGeneration") or 0) >= int(dmeta.get("generation") or 1)
        and updated >= desired
        and total <= desired
        and ready >= desired  # as `kubectl rollout status`: complete once the new pods are ready
    )
    unsched = next((p for p in problems if p.reason == c.UNSCHEDULABLE), None)

    # Schedulable: False with the scheduler's own message.
    if unsched:
        msg = f"pod {unsched.pod}: {unsched.message}" if unsched.pod else unsched.message
        conds = c.set_condition(conds, c.SCHEDULABLE, "False", c.UNSCHEDULABLE, msg, generation, now)
    else:
        conds = c.set_condition(
            conds, c.SCHEDULABLE, "True", c.SCHEDULED, "all pods are scheduled", generation, now
        )

    # Progressing
    dep_progress = next((x for x in dstatus.get("conditions") or [] if x.get("type") == "Progressing"), None)
    if deployment is None:
        conds = c.set_condition(
            conds, c.PROGRESSING, "True", c.ROLLING_OUT, "creating the Deployment", generation, now
        )
    elif dep_progress and dep_progress.get("reason") == c.ROLLOUT_STALLED:
        msg = dep_progress.get("message") or "rollout stalled"
        conds = c.set_condition(conds, c.PROGRESSING, "False", c.ROLLOUT_STALLED, msg, generation, now)
    elif waiting_for_capacity and not rolled_out:
        msg = (
            f"the rollback to {variant} waits for a free GPU for its new pod; {waiting_for_capacity} "
            f"pod(s) keep serving sdpa in process ({updated}/{desired} updated, {ready} ready)"
        )
        conds = c.set_condition(conds, c.PROGRESSING, "True", ROLLBACK_WAITING, msg, generation, now)
    elif not rolled_out:
        msg = f"rolling out the {variant} variant: {updated}/{desired} updated, {ready} ready"
        conds = c.set_condition(conds, c.PROGRESSING, "True", c.ROLLING_OUT, msg, generation, now)
    else:
        msg = f"{variant} variant rolled out"
        conds = c.set_condition(conds, c.PROGRESSING, "False", c.ROLLOUT_COMPLETE, msg, generation, now)

    # Ready
    all_ready = rolled_out and ready >= desired
    if desired == 0 and deployment is not None:
        conds = c.set_condition(
            conds, c.READY, "True", c.SCALED_TO_ZERO, "scaled to zero replicas", generation, now
        )
    elif waiting_for_capacity and ready >= desired:
        # Not rolled out, but every replica serves (sdpa in process): still Ready.
        msg = f"{ready}/{desired} replicas ready (sdpa in process); the rollback waits for a free GPU"
        conds = c.set_condition(conds, c.READY, "True", flash.reason, msg, generation, now)
    elif all_ready and flash.rolled_back:
        # Serving, but on sdpa: the Reason column says why.
        msg = f"{ready}/{desired} replicas ready on the sdpa variant after a flash-attn failure"
        conds = c.set_condition(conds, c.READY, "True", flash.reason, msg, generation, now)
    elif all_ready and (oom := next((p for p in problems if p.reason == Reason.OUT_OF_MEMORY), None)):
        # Serving (sdpa in process), but a flash attempt ran out of GPU memory: never a fallback.
        msg = f"{ready}/{desired} replicas ready; pod {oom.pod}: {oom.message}"
        conds = c.set_condition(conds, c.READY, "True", Reason.OUT_OF_MEMORY, msg, generation, now)
    elif all_ready and probed is not None and not probed.ok:
        msg = f"{ready}/{desired} replicas ready; {probed.message}"
        conds = c.set_condition(conds, c.READY, "True", HEALTH_NOT_PROBED, msg, generation, now)
    elif all_ready:
        msg = f"{ready}/{desired} replicas ready"
        conds = c.set_condition(conds, c.READY, "True", c.ALL_REPLICAS_READY, msg, generation, now)
    else:
        head = problems[0] if problems else None
        if head is None and flash.unhandled:
            head = Problem(flash.reason, flash.message)
        reason = head.reason if head else c.REPLICAS_NOT_READY
        msg = f"{ready}/{desired} replicas ready"
        if head:
            msg += f"; {'pod ' + head.pod + ': ' if head.pod and head.reason != c.UNSCHEDULABLE else ''}{head.message}"
        conds = c.set_condition(conds, c.READY, "False", reason, msg, generation, now)

    # FlashAttentionDegraded (Unknown when no failure was seen but some pods were not seen at all)
    if not flash.degraded and flash.reason == Reason.NOT_DEGRADED and probed is not None and not probed.ok:
        msg = f"no flash-attention failure seen on the pods that answered; {probed.message}"
        conds = c.set_condition(conds, c.FLASH_DEGRADED, "Unknown", HEALTH_NOT_PROBED, msg, generation, now)
    else:
        conds = c.set_condition(
            conds,
            c.FLASH_DEGRADED,
            "True" if flash.degraded else "False",
            flash.reason,
            flash.message,
            generation,
            now,
        )
    if probed is not None:
        conds = c.set_condition(
            conds,
            HEALTH_PROBED,
            "True" if probed.ok else "False",
            probed.reason,
            probed.message,
            generation,
            now,
        )

    # Phase
    if flash.unhandled or (problems and not unsched and not all_ready and desired > 0):
        phase = "Degraded"
    elif c.is_true(conds, c.READY):
        phase = "Ready"
    elif unsched or deployment is None or total == 0:
        phase = "Pending"
    else:
        phase = "Progressing"

    new: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "replicas": total,
        "readyReplicas": ready,
        "replicaSummary": f"{ready}/{desired}",
        "image": image,
        "variant": variant,
        "attention": attention,
        "conditions": conds,
    }
    if name is not None:
        new["selector"] = b.selector_string(name)
    return new


def invalid(*, old: dict[str, Any] | None, generation: int | None, message: str, now: str) -> dict[str, Any]:
    """Status of an OmegaVLM whose spec is invalid: Ready=False InvalidSpec, phase Failed.

    Everything observed before (replicas, image, attention) is kept: no child was touched.
    """
    new = copy.deepcopy(old or {})
    new["observedGeneration"] = generation
    new["phase"] = "Failed"
    new["conditions"] = c.set_condition(
        new.get("conditions"), c.READY, "False", c.INVALID_SPEC, message, generation, now
    )
    return new


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """An RFC 7386 merge patch turning `old` into `new` ({} when equal). kopf's own key is left alone."""
    return _merge_patch(old or {}, new, top=True)


def _merge_patch(old: dict[str, Any], new: dict[str, Any], top: bool = False) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = _merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif key not in old:
            if value is not None:
                patch[key] = value
        elif before != value:
            patch[key] = value
    for key in old:
        if key not in new and not (top and key == "kopf"):
            patch[key] = None
    return patch
