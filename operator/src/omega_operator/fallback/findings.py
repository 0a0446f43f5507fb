"""The one classifier of pod trouble: what is wrong with one pod, as findings with CamelCase reasons. Pure.

A flash-attn failure (the evidence a rollback acts on), OOM, an image pull error, no schedulable
node, a model that fails to load, a crash loop, an unhealthy server: each a :class:`PodFinding`.

Flash evidence is classified: the server's ``flash_attn.error_kind`` on /health, and the
``flash_attn.error_kind=KIND`` its fatal line carries in the termination message. Only the flash
kinds (``health_report.FLASH_ERROR_KINDS``) are flash evidence; ``out_of_memory`` is
``OutOfMemory`` and ``other`` is ``FlashAttemptFailed``, neither ever a fallback. Restarts are flash
evidence only for a pod not Ready on flash now whose restarts all fell inside
``crashLoopWindowSeconds`` from its start, and whose last exit has no other known cause.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from omega_operator import conditions
from omega_operator.fallback.inputs import FallbackSpec, PodView, Termination
from omega_operator.health_report import (
    FLASH_BACKEND,
    FLASH_ERROR_KINDS,
    OUT_OF_MEMORY_KIND,
    ProbeOutcome,
    ProbeResult,
)

MAX_MESSAGE = 1024


class Reason(StrEnum):
    """Finding and ``FlashAttentionDegraded`` reasons (CamelCase constants)."""

    FLASH_LOAD_FAILED = "FlashAttentionLoadFailed"
    FLASH_CRASH_LOOP = "FlashVariantCrashLoop"
    OOM_KILLED = "OOMKilled"
    OUT_OF_MEMORY = "OutOfMemory"  # the GPU ran out of memory (flash_attn.error_kind out_of_memory)
    FLASH_ATTEMPT_FAILED = "FlashAttemptFailed"  # the flash attempt failed, not by flash-attn (kind other)
    IMAGE_PULL = "ImagePullFailed"  # ErrImagePull / ImagePullBackOff / InvalidImageName
    UNSCHEDULABLE = conditions.UNSCHEDULABLE
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    # the server exited with ``fatal: kv_cache_too_small``: not one MAX_MODEL_LENGTH sequence fits
    KV_CACHE_TOO_SMALL = "KVCacheTooSmall"
    CRASH_LOOP = "CrashLoopBackOff"
    SERVER_UNHEALTHY = "ServerUnhealthy"
    # FlashAttentionDegraded=False reasons
    NOT_DEGRADED = "FlashAttentionHealthy"
    NODE_FAILED = "FlashAttentionNodeFailed"  # flash failed on some nodes only: kept off them
    SDPA_REQUESTED = "SdpaRequested"
    RETRYING_FLASH = "RetryingFlash"


FLASH_REASONS = frozenset({Reason.FLASH_LOAD_FAILED, Reason.FLASH_CRASH_LOOP})

# Severity order for the headline of non-flash problems (first wins).
_SEVERITY = (
    Reason.UNSCHEDULABLE,
    Reason.IMAGE_PULL,
    Reason.OOM_KILLED,
    Reason.OUT_OF_MEMORY,
    Reason.KV_CACHE_TOO_SMALL,
    Reason.MODEL_LOAD_FAILED,
    Reason.FLASH_ATTEMPT_FAILED,
    Reason.CRASH_LOOP,
    Reason.SERVER_UNHEALTHY,
)

_IMAGE_PULL_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)
_FLASH_RE = re.compile(r"flash[-_ ]?attn|flash_attention|flashattention", re.IGNORECASE)
_MODEL_RE = re.compile(r"MODEL_PATH|\bmodel\b|checkpoint|config\.json|safetensors", re.IGNORECASE)
_KV_RE = re.compile(r"\bkv_cache_too_small\b")  # the server's StartupError kind
_ERROR_LINE_RE = re.compile(r"\b\w*(Error|Exception)\b|^fatal\b|^error\b", re.IGNORECASE)
# What the server's fatal line adds when a flash failure came first (omega_server.flash_failure).
_KIND_RE = re.compile(r"\(flash_attn\.error_kind=(\w+): ?")
_OOM_TEXT_RE = re.compile(r"out of memory|OutOfMemoryError", re.IGNORECASE)


@dataclass(frozen=True)
class PodFinding:
    """A problem seen on one pod."""

    pod: str
    node: str | None
    reason: Reason
    message: str
    kind: str | None = None  # flash failures: the server's flash_attn.error_kind, when it named one

    @property
    def is_flash(self) -> bool:
        """A flash-attn failure (the evidence a rollback acts on)."""
        return self.reason in FLASH_REASONS


def rank_problems(findings: Iterable[PodFinding]) -> tuple[PodFinding, ...]:
    """The non-flash findings, most severe first (the first one is the Ready/phase reason)."""
    rank = {r: i for i, r in enumerate(_SEVERITY)}
    return tuple(
        sorted((f for f in findings if not f.is_flash), key=lambda f: (rank.get(f.reason, 99), f.pod))
    )


def pod_findings(
    pod: PodView, spec: FallbackSpec, probe: ProbeResult | None, now: datetime | None = None
) -> list[PodFinding]:
    """The problems on one pod, flash ones first (``now``: for the crash-loop window)."""
    out: list[PodFinding] = []
    flash = spec.wants_flash and pod.is_flash_variant(spec)

    def add(reason: Reason, message: str, kind: str | None = None) -> None:
        out.append(PodFinding(pod.name, pod.node, reason, clip(message), kind))

    report = probe.report if probe is not None and probe.outcome is ProbeOutcome.REPORT else None
    if flash and report is not None and report.flash_failed:
        kind = report.flash_attn.error_kind
        if report.flash_attn.flash_fault:
            add(Reason.FLASH_LOAD_FAILED, report.flash_error, kind)
        elif kind == OUT_OF_MEMORY_KIND:
            add(Reason.OUT_OF_MEMORY, f"out of GPU memory trying flash-attn: {report.flash_error}")
        else:
            add(Reason.FLASH_ATTEMPT_FAILED, f"flash attempt failed ({kind}): {report.flash_error}")

    term = pod.terminated or pod.last_terminated
    crash = _classify_termination(term) if term is not None else None
    on_flash = report is not None and report.ready and report.attn == FLASH_BACKEND
    if flash and crash == Reason.FLASH_CRASH_LOOP and term is not None:
        named = _KIND_RE.search(_key_line(term.message))
        add(
            Reason.FLASH_CRASH_LOOP,
            _key_line(term.message) or "container exited naming flash-attn",
            named.group(1) if named else None,
        )
    elif crash in _OTHER_CAUSES and term is not None:
        add(crash, _termination_text(term, pod.restarts))
    elif (
        flash
        and not on_flash
        and pod.restarts >= max(1, spec.crash_loop_restarts)
        and pod.waiting_reason not in _IMAGE_PULL_REASONS
        and _restarts_in_window(pod, term, spec, now)
    ):
        add(
            Reason.FLASH_CRASH_LOOP,
            f"flash variant restarted {pod.restarts} times within {spec.crash_loop_window_seconds}s of "
            f"its start (threshold {spec.crash_loop_restarts}); "
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
        cause = _classify_termination(Termination(None, None, report.error))
        if cause == Reason.KV_CACHE_TOO_SMALL:
            add(Reason.KV_CACHE_TOO_SMALL, report.error)
        elif cause == Reason.FLASH_CRASH_LOOP and flash:
            if not any(f.reason == Reason.FLASH_LOAD_FAILED for f in out):
                add(Reason.FLASH_LOAD_FAILED, report.error)
        elif cause == Reason.OUT_OF_MEMORY:
            add(Reason.OUT_OF_MEMORY, report.error)
        elif _MODEL_RE.search(report.error):
            add(Reason.MODEL_LOAD_FAILED, report.error)
        else:
            add(Reason.SERVER_UNHEALTHY, report.error)
    return out


_OTHER_CAUSES = (Reason.OOM_KILLED, Reason.OUT_OF_MEMORY, Reason.KV_CACHE_TOO_SMALL, Reason.MODEL_LOAD_FAILED)


def _restarts_in_window(
    pod: PodView, term: Termination | None, spec: FallbackSpec, now: datetime | None
) -> bool:
    """All of the pod's restarts fell inside the window from its start: its last exit came less than
    ``crashLoopWindowSeconds`` after the pod started (a pod that served, then restarted, ran longer).
    Without the times (an API that gives none) every restart counts, as before the window."""
    finished = term.finished_at if term is not None else None
    if pod.start_time is None or (finished is None and now is None):
        return True
    end = finished if finished is not None else now
    assert end is not None
    return (end - pod.start_time).total_seconds() <= spec.crash_loop_window_seconds


def _classify_termination(t: Termination) -> Reason | None:
    """Why a container ended: OOM, a KV cache too small, a flash-attn error, a model load error, or
    unknown (None).

    A kind the server named (``(flash_attn.error_kind=KIND: ...)``) decides first: a flash kind is a
    flash failure, unless the fatal error itself ran out of memory; ``out_of_memory`` is
    OutOfMemory; ``other`` leaves the fatal error to speak for itself (a model load error, mostly).
    """
    if t.reason == "OOMKilled" or (t.exit_code == 137 and "oom" in (t.message or "").lower()):
        return Reason.OOM_KILLED
    line = _key_line(t.message)
    if line and _KV_RE.search(line):
        return Reason.KV_CACHE_TOO_SMALL
    kind = _KIND_RE.search(line)
    if kind is not None:
        fatal = line[: kind.start()]
        if kind.group(1) == OUT_OF_MEMORY_KIND or _OOM_TEXT_RE.search(fatal):
            return Reason.OUT_OF_MEMORY
        if kind.group(1) in FLASH_ERROR_KINDS:
            return Reason.FLASH_CRASH_LOOP
        return Reason.MODEL_LOAD_FAILED if _MODEL_RE.search(fatal) else None
    if _OOM_TEXT_RE.search(line):
        return Reason.OUT_OF_MEMORY
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


def clip(text: str) -> str:
    """At most ``MAX_MESSAGE`` characters (status fields and Events stay small)."""
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."
