"""The server's ``GET /health`` contract as the operator reads it: report model, parser, probe result.

Pure: pydantic and the standard library, no I/O.

DESIGN.md 3.2 is the contract. :class:`HealthReport` holds only the fields the operator acts on and
ignores the rest, so the server may add fields freely. :func:`parse_report` is the one entry point:
it takes a body exactly as the server sends it (bytes, text or an already-decoded mapping) and gives
a :class:`HealthReport`, or None when the body is not a /health object. ``FLASH_REQUESTS`` is the
operator's one definition of the ``ATTN_IMPL`` values that ask for flash-attn 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: ``ATTN_IMPL`` values that ask the server for flash-attn 2 first (``auto`` = flash, then sdpa).
FLASH_REQUESTS = frozenset({"flash_attention_2", "auto"})
FLASH_BACKEND = "flash_attention_2"
#: ``flash_attn.error_kind`` values that are a fault of flash-attn on this build or device: the only
#: ones a rollback acts on (the server's ``flash_failure.FLASH_KINDS``: tests/contracts checks it).
#: ``out_of_memory`` and ``other`` are not; a server too old to send a kind is read as a flash fault.
FLASH_ERROR_KINDS = frozenset({"not_installed", "import_error", "unsupported_device", "kernel_error"})
OUT_OF_MEMORY_KIND = "out_of_memory"


class FlashAttnInfo(BaseModel):
    """``flash_attn`` block of the health report: did flash-attn 2 load, and if not, why."""

    model_config = ConfigDict(extra="ignore")

    available: bool = False
    loaded: bool = False
    version: str | None = None
    error: str | None = None
    error_kind: str | None = None  # the server's classification of ``error`` (None: none, or an old server)

    @property
    def flash_fault(self) -> bool:
        """The error is a fault of flash-attn (a flash kind, or no kind from an older server)."""
        return self.error_kind is None or self.error_kind in FLASH_ERROR_KINDS


class HealthReport(BaseModel):
    """The fields of ``GET /health`` (DESIGN.md 3.2) that the operator needs; extra fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    status: str = "unknown"
    ready: bool = False
    attn: str | None = Field(default=None, description="backend actually in use")
    attn_requested: str | None = None
    flash_attn: FlashAttnInfo = Field(default_factory=FlashAttnInfo)
    model: str | None = None
    dtype: str | None = None
    devices: list[str] = Field(default_factory=list)
    device_names: list[str] = Field(default_factory=list)
    error: str | None = Field(default=None, description="engine/start-up error, when the server gives one")
    version: str | None = None

    @field_validator("flash_attn", "devices", "device_names", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any, info: Any) -> Any:
        """A server still loading sends ``null`` for what it does not know yet."""
        if value is None:
            return {} if info.field_name == "flash_attn" else []
        return value

    @property
    def flash_requested(self) -> bool:
        """True when the server was asked for flash-attn 2 (explicitly or through ``auto``)."""
        return (self.attn_requested or "") in FLASH_REQUESTS

    @property
    def flash_failed(self) -> bool:
        """True when flash was asked for and the server says it could not load it.

        A server that is still loading reports ``loaded: false`` without an error; that is not a
        failure yet. A failure is an explicit ``flash_attn.error``, or a ready server whose real
        backend is not flash although flash was asked for (it fell back in-process).
        """
        if not self.flash_requested or self.flash_attn.loaded:
            return False
        if self.flash_attn.error:
            return True
        return self.ready and self.attn is not None and self.attn != FLASH_BACKEND

    @property
    def flash_error(self) -> str:
        """The server's own words about the flash failure (or a description when it gave none)."""
        if self.flash_attn.error:
            return self.flash_attn.error
        return f"attn_requested={self.attn_requested} but the server runs attn={self.attn}"


def parse_report(body: bytes | str | Mapping[str, Any]) -> HealthReport | None:
    """Parse a /health body; None when it is not a JSON object of the expected shape."""
    try:
        data = json.loads(body) if isinstance(body, bytes | str) else dict(body)
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return HealthReport.model_validate(data)
    except ValidationError:
        return None


class ProbeOutcome(StrEnum):
    """What a probe got back."""

    REPORT = "report"  # a parseable health body (HTTP 200, or 503 while loading / engine dead)
    HTTP_STATUS = "http_status"  # an HTTP answer without a health body
    UNREACHABLE = "unreachable"  # connection refused, timeout, proxy could not reach the pod


@dataclass(frozen=True)
class ProbeResult:
    """The typed outcome of one probe. ``report`` is set exactly when ``outcome`` is REPORT."""

    pod: str
    outcome: ProbeOutcome
    http_status: int | None = None
    report: HealthReport | None = None
    error: str | None = None
    duration_s: float = 0.0

    @property
    def ready(self) -> bool:
        """200 with ``ready: true``."""
        return self.http_status == 200 and self.report is not None and self.report.ready

    @property
    def metric_result(self) -> Literal["ready", "not_ready", "unreachable"]:
        """Label value for ``omega_operator_health_probes_total{result}``."""
        if self.outcome is ProbeOutcome.UNREACHABLE:
            return "unreachable"
        return "ready" if self.ready else "not_ready"
