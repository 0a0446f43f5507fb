"""The flash -> sdpa fallback decision (DESIGN.md 3.3, issue 5). Pure: no I/O, no clock, no globals.

Inputs: the spec's few relevant fields (:class:`FallbackSpec`), the current ``status.attention`` (a
mapping in the CR's camelCase shape), the OmegaVLM's annotations, the pods (:class:`PodView`, read
from pod objects) and their /health probe results (:class:`omega_operator.health.ProbeResult`).
Output: a :class:`Decision` that says which attention the Deployment must be built with, what goes
into ``status.attention`` and the ``FlashAttentionDegraded`` condition, and why.

Rules
-----
* Only pods of the flash variant for the *current* flash image count as flash evidence (pods being
  deleted, sdpa pods and pods of an older flash image are ignored for the decision).
* Flash failure, reason ``FlashAttentionLoadFailed``: the pod's /health (200 or 503, the body always
  comes) has ``attn_requested`` flash (``flash_attention_2`` or ``auto``) and ``flash_attn.loaded``
  false with an error, or it is ready on another backend. A pod still loading (503, no error yet) or
  unreachable is not evidence: we wait.
* Flash failure, reason ``FlashVariantCrashLoop``: a flash pod's container terminated with a message
  whose fatal line names flash-attn (at once: the server said why), or its restarts reached
  ``fallback.crashLoopRestarts`` without a known non-flash cause.
* Never a flash failure: OOMKilled, image pull errors, Unschedulable, a model that fails to load,
  crash loops below the threshold. Each shows as a :class:`PodFinding` with its own reason.
* ``fallback.enabled: false``: a flash failure gives ``Action.DEGRADED`` (no rollback).
* Sticky: once ``status.attention.fallback`` exists with ``fromImage`` = the current flash image and
  ``attention`` = the spec's attention, the Deployment stays on sdpa. It is cleared (flash tried
  again) when the flash image or the spec's attention changes, or on the retry annotation.
* Retry annotation ``vlm.omega.io/retry-flash``: its value is compared with
  ``status.attention.retryFlash`` (the last value consumed). A new non-empty value is consumed once:
  it is recorded there and, when a fallback is active, the fallback is cleared so the flash variant
  is tried again. The same value never retries twice; set a new one (for example a timestamp:
  ``kubectl annotate ovlm NAME vlm.omega.io/retry-flash="$(date +%s)" --overwrite``) to retry again.
  A value set while no fallback is active is consumed too, so it cannot trigger a later retry.
* Everything the decision depends on lives in the status, so it survives an operator restart.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from omega_operator.health import FLASH_REQUESTS, ProbeOutcome, ProbeResult

RETRY_ANNOTATION = "vlm.omega.io/retry-flash"
CONDITION_TYPE = "FlashAttentionDegraded"
EVENT_REASON = "FlashAttentionFallback"
SDPA = "sdpa"
MAX_MESSAGE = 1024


class Reason(StrEnum):
    """Condition / finding reasons (CamelCase constants)."""

    FLASH_LOAD_FAILED = "FlashAttentionLoadFailed"
    FLASH_CRASH_LOOP = "FlashVariantCrashLoop"
    OOM_KILLED = "OOMKilled"
    IMAGE_PULL = "ImagePullFailed"  # ErrImagePull / ImagePullBackOff / InvalidImageName
    UNSCHEDULABLE = "Unschedulable"
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    CRASH_LOOP = "CrashLoopBackOff"
    SERVER_UNHEALTHY = "ServerUnhealthy"
    # FlashAttentionDegraded=False reasons
    NOT_DEGRADED = "FlashAttentionHealthy"
    SDPA_REQUESTED = "SdpaRequested"
    RETRYING_FLASH = "RetryingFlash"


FLASH_REASONS = frozenset({Reason.FLASH_LOAD_FAILED, Reason.FLASH_CRASH_LOOP})

# Severity order for the headline of non-flash problems (first wins).
_SEVERITY = (
    Reason.UNSCHEDULABLE,
    Reason.IMAGE_PULL,
    Reason.OOM_KILLED,
    Reason.MODEL_LOAD_FAILED,
    Reason.CRASH_LOOP,
    Reason.SERVER_UNHEALTHY,
)

_IMAGE_PULL_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)
_FLASH_RE = re.compile(r"flash[-_ ]?attn|flash_attention|flashattention", re.IGNORECASE)
_MODEL_RE = re.compile(r"MODEL_PATH|\bmodel\b|checkpoint|config\.json|safetensors", re.IGNORECASE)
_ERROR_LINE_RE = re.compile(r"\b\w*(Error|Exception)\b|^fatal\b|^error\b", re.IGNORECASE)


class Action(StrEnum):
    """What the operator must do."""

    KEEP = "keep"  # nothing changes on the fallback front
    ROLLBACK = "rollback"  # record the fallback, move the Deployment to sdpa, Event + metric
    DEGRADED = "degraded"  # flash failed but fallback.enabled is false: report, do not roll back
    RESET = "reset"  # an old fallback no longer applies (flash image/attention changed, retry): try flash


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FallbackSpec:
    """The spec fields the decision reads. Images are the resolved variants (the builders' rule)."""

    attention: str
    flash_image: str
    sdpa_image: str
    enabled: bool = True
    crash_loop_restarts: int = 3

    @classmethod
    def from_spec(cls, spec: Any, *, flash_image: str, sdpa_image: str) -> FallbackSpec:
        """Adapt the operator's spec model (``omega_operator.api``) or a plain camelCase mapping."""

        def get(obj: Any, *names: str, default: Any = None) -> Any:
            # Unset optional fields are None in the models: None means "the default".
            for n in names:
                value = obj.get(n) if isinstance(obj, Mapping) else getattr(obj, n, None)
                if value is not None:
                    return value
            return default

        attention = get(spec, "attention", default="auto")
        attention = getattr(attention, "value", attention)
        fb = get(spec, "fallback", default={})
        return cls(
            attention=str(attention),
            flash_image=flash_image,
            sdpa_image=sdpa_image,
            enabled=bool(get(fb, "enabled", default=True)),
            crash_loop_restarts=int(get(fb, "crash_loop_restarts", "crashLoopRestarts", default=3)),
        )

    @property
    def wants_flash(self) -> bool:
        """The spec asks for flash first (``auto`` or ``flash_attention_2``)."""
        return self.attention in FLASH_REQUESTS


@dataclass(frozen=True)
class Termination:
    """A container's terminated state (current or last)."""

    reason: str | None
    exit_code: int | None
    message: str | None


@dataclass(frozen=True)
class PodView:
    """What the decision needs from a pod (read with :meth:`from_pod`)."""

    name: str
    node: str | None = None
    phase: str = "Pending"
    image: str | None = None
    attn_impl: str | None = None  # the container's ATTN_IMPL env
    restarts: int = 0
    ready: bool = False
    deleting: bool = False
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated: Termination | None = None  # state.terminated
    last_terminated: Termination | None = None  # lastState.terminated
    unschedulable: str | None = None  # PodScheduled=False (reason Unschedulable) message

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any], container: str | None = None) -> PodView:
        """Read a pod object (API JSON, camelCase dict). ``container``: the server container's name
        (default: the one named ``server``, else the first)."""
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        containers = spec.get("containers") or []
        c_spec = _pick(containers, container)
        c_status = _pick(status.get("containerStatuses") or [], (c_spec or {}).get("name") or container)
        env = {
            e.get("name"): e.get("value") for e in (c_spec or {}).get("env") or [] if isinstance(e, Mapping)
        }
        state = (c_status or {}).get("state") or {}
        last = (c_status or {}).get("lastState") or {}
        waiting = state.get("waiting") or {}
        unsched = None
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                unsched = cond.get("message") or cond.get("reason") or "Unschedulable"
        return cls(
            name=str(meta.get("name") or ""),
            node=spec.get("nodeName"),
            phase=str(status.get("phase") or "Pending"),
            image=(c_spec or {}).get("image"),
            attn_impl=env.get("ATTN_IMPL"),
            restarts=int((c_status or {}).get("restartCount") or 0),
            ready=bool((c_status or {}).get("ready")),
            deleting=bool(meta.get("deletionTimestamp")),
            waiting_reason=waiting.get("reason"),
            waiting_message=waiting.get("message"),
            terminated=_termination(state.get("terminated")),
            last_terminated=_termination(last.get("terminated")),
            unschedulable=unsched,
        )

    def is_flash_variant(self, spec: FallbackSpec) -> bool:
        """Runs the flash variant of the spec's *current* flash image."""
        if self.image != spec.flash_image:
            return False
        if self.attn_impl is not None:
            return self.attn_impl in FLASH_REQUESTS
        return spec.flash_image != spec.sdpa_image


def _pick(items: Sequence[Mapping[str, Any]], name: str | None) -> Mapping[str, Any] | None:
    if not items:
        return None
    for it in items:
        if it.get("name") == (name or "server"):
            return it
    return items[0] if name is None or name == "server" else None


def _termination(t: Mapping[str, Any] | None) -> Termination | None:
    if not t:
        return None
    code = t.get("exitCode")
    return Termination(
        reason=t.get("reason"), exit_code=None if code is None else int(code), message=t.get("message")
    )


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FallbackRecord:
    """``status.attention.fallback``: when, from which image, why, which pod and node."""

    at: str
    from_image: str
    to_image: str
    reason: str
    message: str
    pod: str
    node: str | None
    attention: str  # the spec's attention when it happened (part of the sticky key)

    def to_status(self) -> dict[str, Any]:
        """camelCase dict for the status."""
        return {
            "at": self.at,
            "fromImage": self.from_image,
            "toImage": self.to_image,
            "reason": self.reason,
            "message": self.message,
            "pod": self.pod,
            "node": self.node,
            "attention": self.attention,
        }

    @classmethod
    def from_status(cls, data: Mapping[str, Any] | None) -> FallbackRecord | None:
        """Read it back (None when absent or empty)."""
        if not data or not data.get("fromImage"):
            return None
        return cls(
            at=str(data.get("at") or ""),
            from_image=str(data.get("fromImage")),
            to_image=str(data.get("toImage") or ""),
            reason=str(data.get("reason") or Reason.FLASH_LOAD_FAILED),
            message=str(data.get("message") or ""),
            pod=str(data.get("pod") or ""),
            node=data.get("node"),
            # Records written without it predate the field: treat them as made for ``auto``.
            attention=str(data.get("attention") or "auto"),
        )

    def applies_to(self, spec: FallbackSpec) -> bool:
        """Still binding: same flash image and same attention setting."""
        return self.from_image == spec.flash_image and self.attention == spec.attention


@dataclass(frozen=True)
class PodFinding:
    """A problem seen on one pod."""

    pod: str
    node: str | None
    reason: Reason
    message: str

    @property
    def is_flash(self) -> bool:
        return self.reason in FLASH_REASONS


@dataclass(frozen=True)
class FlashErrorSummary:
    """One distinct flash error and the pods that reported it."""

    message: str
    pods: tuple[str, ...]

    def to_status(self) -> dict[str, Any]:
        return {"message": self.message, "pods": list(self.pods), "count": len(self.pods)}


@dataclass(frozen=True)
class AttentionSummary:
    """What the pods really run, from ready pods' /health ``attn``."""

    active: str  # one backend name, "mixed", or "unknown" when no ready pod has reported
    counts: Mapping[str, int] = field(default_factory=dict)
    unknown: int = 0  # pods without a ready health report (loading, unreachable, not started)


@dataclass(frozen=True)
class Decision:
    """The outcome. ``attention`` is what the Deployment must be built with."""

    action: Action
    attention: str
    fallback: FallbackRecord | None
    retry_flash: str | None
    condition_status: bool  # FlashAttentionDegraded
    reason: str  # FlashAttentionDegraded reason
    message: str
    summary: AttentionSummary
    findings: tuple[PodFinding, ...] = ()
    flash_errors: tuple[FlashErrorSummary, ...] = ()
    flash_failure: PodFinding | None = None

    @property
    def degraded(self) -> bool:
        """The OmegaVLM runs degraded because of flash (rolled back, or failing with fallback off)."""
        return self.condition_status

    @property
    def problems(self) -> tuple[PodFinding, ...]:
        """Non-flash findings, most severe first (for the Ready/phase reason)."""
        rank = {r: i for i, r in enumerate(_SEVERITY)}
        return tuple(
            sorted(
                (f for f in self.findings if not f.is_flash), key=lambda f: (rank.get(f.reason, 99), f.pod)
            )
        )

    @property
    def headline(self) -> PodFinding | None:
        """The most severe non-flash problem, if any."""
        p = self.problems
        return p[0] if p else None

    def condition(self) -> dict[str, str]:
        """The FlashAttentionDegraded condition (lastTransitionTime is the conditions module's job)."""
        return {
            "type": CONDITION_TYPE,
            "status": "True" if self.condition_status else "False",
            "reason": self.reason,
            "message": self.message,
        }

    def status_attention(self) -> dict[str, Any]:
        """The keys of ``status.attention`` this decision owns (merge-patch shape: None deletes)."""
        return {
            "active": self.summary.active,
            "counts": dict(self.summary.counts),
            "flashErrors": [e.to_status() for e in self.flash_errors],
            "fallback": self.fallback.to_status() if self.fallback else None,
            "retryFlash": self.retry_flash,
        }


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------


def decide(
    spec: FallbackSpec,
    status_attention: Mapping[str, Any] | None,
    pods: Iterable[PodView],
    probes: Mapping[str, ProbeResult],
    *,
    annotations: Mapping[str, str] | None = None,
    now: datetime,
) -> Decision:
    """Decide keep / rollback / degraded / reset. See the module docstring for the rules."""
    st = status_attention or {}
    record = FallbackRecord.from_status(st.get("fallback"))
    consumed = st.get("retryFlash") or None
    live = sorted((p for p in pods if not p.deleting), key=lambda p: p.name)
    findings = tuple(f for p in live for f in _pod_findings(p, spec, probes.get(p.name)))
    summary = summarize_attention(live, probes)
    flash_errors = summarize_flash_errors(findings)
    # The retry annotation: a new value is consumed once.
    wanted = (annotations or {}).get(RETRY_ANNOTATION) or None
    retry = wanted is not None and wanted != consumed
    retry_value = wanted if retry else consumed

    def make(
        action: Action,
        attention: str,
        fallback: FallbackRecord | None,
        degraded: bool,
        reason: str,
        message: str,
        failure: PodFinding | None = None,
    ) -> Decision:
        return Decision(
            action=action,
            attention=attention,
            fallback=fallback,
            retry_flash=retry_value,
            condition_status=degraded,
            reason=reason,
            message=_clip(message),
            summary=summary,
            findings=findings,
            flash_errors=flash_errors,
            flash_failure=failure,
        )

    if not spec.wants_flash:
        # An old record is dropped (fallback None), but nothing is retried: KEEP, not RESET.
        msg = f"attention is {spec.attention}: the flash variant is not used"
        return make(Action.KEEP, SDPA, None, False, Reason.SDPA_REQUESTED, msg)

    if record is not None:
        if record.applies_to(spec) and not retry:
            return make(Action.KEEP, SDPA, record, True, record.reason, _fallback_message(record))
        if retry:
            why = f"retry requested ({RETRY_ANNOTATION}={wanted})"
        elif record.from_image != spec.flash_image:
            why = f"flash image changed from {record.from_image} to {spec.flash_image}"
        else:
            why = f"attention changed from {record.attention} to {spec.attention}"
        msg = f"trying the flash variant again: {why}"
        return make(Action.RESET, spec.attention, None, False, Reason.RETRYING_FLASH, msg)

    failure = next((f for f in findings if f.is_flash), None)
    if failure is None:
        msg = "no flash-attention failure seen"
        return make(Action.KEEP, spec.attention, None, False, Reason.NOT_DEGRADED, msg)
    if not spec.enabled:
        msg = f"fallback disabled; pod {failure.pod}: {failure.message}"
        return make(Action.DEGRADED, spec.attention, None, True, failure.reason, msg, failure)
    new = FallbackRecord(
        at=now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        from_image=spec.flash_image,
        to_image=spec.sdpa_image,
        reason=failure.reason,
        message=failure.message,
        pod=failure.pod,
        node=failure.node,
        attention=spec.attention,
    )
    return make(Action.ROLLBACK, SDPA, new, True, new.reason, _fallback_message(new), failure)


def _fallback_message(r: FallbackRecord) -> str:
    where = f"pod {r.pod}" + (f" on node {r.node}" if r.node else "")
    return _clip(f"rolled back to {r.to_image or 'the sdpa image'} from {r.from_image}; {where}: {r.message}")


def _pod_findings(pod: PodView, spec: FallbackSpec, probe: ProbeResult | None) -> list[PodFinding]:
    """The problems on one pod, flash ones first."""
    out: list[PodFinding] = []
    flash = spec.wants_flash and pod.is_flash_variant(spec)

    def add(reason: Reason, message: str) -> None:
        out.append(PodFinding(pod.name, pod.node, reason, _clip(message)))

    report = probe.report if probe is not None and probe.outcome is ProbeOutcome.REPORT else None
    if flash and report is not None and report.flash_failed:
        add(Reason.FLASH_LOAD_FAILED, report.flash_error)

    term = pod.terminated or pod.last_terminated
    crash = _classify_termination(term) if term is not None else None
    if flash and crash == Reason.FLASH_CRASH_LOOP and term is not None:
        add(Reason.FLASH_CRASH_LOOP, _key_line(term.message) or "container exited naming flash-attn")
    elif crash in (Reason.OOM_KILLED, Reason.MODEL_LOAD_FAILED) and term is not None:
        add(crash, _termination_text(term, pod.restarts))
    elif flash and pod.restarts >= max(1, spec.crash_loop_restarts):
        add(
            Reason.FLASH_CRASH_LOOP,
            f"flash variant restarted {pod.restarts} times (threshold {spec.crash_loop_restarts}); "
            + (_termination_text(term, pod.restarts) if term else "no termination message"),
        )
    elif pod.waiting_reason == "CrashLoopBackOff" or (term is not None and pod.restarts > 0):
        add(Reason.CRASH_LOOP, _termination_text(term, pod.restarts) if term else pod.waiting_message or "")

    if pod.waiting_reason in _IMAGE_PULL_REASONS:
        add(Reason.IMAGE_PULL, f"{pod.waiting_reason}: {pod.waiting_message or pod.image or ''}".strip())
    if pod.unschedulable:
        add(Reason.UNSCHEDULABLE, pod.unschedulable)
    if (
        report is not None
        and not report.ready
        and report.error
        and report.status not in ("loading", "starting")
    ):
        if flash and _FLASH_RE.search(report.error):
            if not any(f.reason == Reason.FLASH_LOAD_FAILED for f in out):
                add(Reason.FLASH_LOAD_FAILED, report.error)
        elif _MODEL_RE.search(report.error):
            add(Reason.MODEL_LOAD_FAILED, report.error)
        else:
            add(Reason.SERVER_UNHEALTHY, report.error)
    return out


def _classify_termination(t: Termination) -> Reason | None:
    """Why a container ended: OOM, a flash-attn error, a model load error, or unknown (None)."""
    if t.reason == "OOMKilled" or (t.exit_code == 137 and "oom" in (t.message or "").lower()):
        return Reason.OOM_KILLED
    line = _key_line(t.message)
    if line and _FLASH_RE.search(line):
        return Reason.FLASH_CRASH_LOOP
    if line and _MODEL_RE.search(line):
        return Reason.MODEL_LOAD_FAILED
    return None


def _key_line(message: str | None) -> str:
    """The line that says why a process died: the last ``fatal:`` line, else the last line naming
    an error or exception, else the last line."""
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    for ln in reversed(lines):
        if ln.lower().startswith("fatal"):
            return ln
    for ln in reversed(lines):
        if _ERROR_LINE_RE.search(ln):
            return ln
    return lines[-1]


def _termination_text(t: Termination | None, restarts: int) -> str:
    if t is None:
        return ""
    parts = [f"exit code {t.exit_code}" if t.exit_code is not None else "", t.reason or ""]
    head = ", ".join(p for p in parts if p)
    line = _key_line(t.message)
    text = f"{head}: {line}" if line else head
    return f"{text} (restarts {restarts})" if restarts else text


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def summarize_attention(pods: Iterable[PodView], probes: Mapping[str, ProbeResult]) -> AttentionSummary:
    """All one backend, ``mixed`` (with counts), or ``unknown`` when no ready pod reported."""
    counts: Counter[str] = Counter()
    unknown = 0
    for p in pods:
        if p.deleting:
            continue
        r = probes.get(p.name)
        if r is not None and r.report is not None and r.report.ready and r.report.attn:
            counts[r.report.attn] += 1
        else:
            unknown += 1
    if not counts:
        active = "unknown"
    elif len(counts) == 1:
        active = next(iter(counts))
    else:
        active = "mixed"
    return AttentionSummary(active=active, counts=dict(sorted(counts.items())), unknown=unknown)


def summarize_flash_errors(findings: Iterable[PodFinding], limit: int = 5) -> tuple[FlashErrorSummary, ...]:
    """Distinct flash errors with the pods that reported each (at most ``limit``, most pods first)."""
    by_msg: dict[str, list[str]] = {}
    for f in findings:
        if f.is_flash:
            by_msg.setdefault(f.message, []).append(f.pod)
    ordered = sorted(by_msg.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return tuple(FlashErrorSummary(m, tuple(sorted(set(p)))) for m, p in ordered[:limit])


def now_utc() -> datetime:
    """The clock the impure callers pass in as ``now``."""
    return datetime.now(UTC)
