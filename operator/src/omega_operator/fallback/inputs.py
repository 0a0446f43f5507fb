"""The fallback decision's inputs: its view of the spec (FallbackSpec) and of the pods (PodView). Pure.

:func:`fallback_spec` adapts the OmegaVLM spec with the builders' defaults and image rule;
:meth:`PodView.from_pod` reads a pod object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from omega_operator import builders as b
from omega_operator.api.defaults import (
    DEFAULT_CRASH_LOOP_RESTARTS,
    DEFAULT_CRASH_LOOP_WINDOW_SECONDS,
    DEFAULT_FALLBACK_ENABLED,
)
from omega_operator.api.models import OmegaVLMSpec
from omega_operator.health_report import FLASH_REQUESTS


@dataclass(frozen=True)
class FallbackSpec:
    """The spec fields the decision reads. Images are the resolved variants (the builders' rule)."""

    attention: str
    flash_image: str
    sdpa_image: str
    enabled: bool = DEFAULT_FALLBACK_ENABLED
    crash_loop_restarts: int = DEFAULT_CRASH_LOOP_RESTARTS
    crash_loop_window_seconds: int = DEFAULT_CRASH_LOOP_WINDOW_SECONDS

    @property
    def wants_flash(self) -> bool:
        """The spec asks for flash first (``auto`` or ``flash_attention_2``)."""
        return self.attention in FLASH_REQUESTS


def fallback_spec(spec: OmegaVLMSpec) -> FallbackSpec:
    """The decision's view of a spec, with the builders' defaults and image rule (one source)."""
    return FallbackSpec(
        attention=b.attention(spec),
        flash_image=b.flash_image(spec) or "",
        sdpa_image=b.sdpa_image(spec) or "",
        enabled=b.fallback_enabled(spec),
        crash_loop_restarts=b.crash_loop_restarts(spec),
        crash_loop_window_seconds=b.crash_loop_window(spec),
    )


@dataclass(frozen=True)
class Termination:
    """A container's terminated state (current or last)."""

    reason: str | None
    exit_code: int | None
    message: str | None
    finished_at: datetime | None = None  # finishedAt


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
    start_time: datetime | None = None  # status.startTime: when the kubelet started the pod

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
            start_time=_time(status.get("startTime")),
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
        reason=t.get("reason"),
        exit_code=None if code is None else int(code),
        message=t.get("message"),
        finished_at=_time(t.get("finishedAt")),
    )


def _time(value: Any) -> datetime | None:
    """An RFC 3339 time of the API (``2026-01-02T03:04:05Z``), None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
