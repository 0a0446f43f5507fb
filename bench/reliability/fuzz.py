"""Send fuzz cases to a running server and judge every answer against the error contract.

The contract (README, "Errors"): a bad request gets a 4xx whose body is OpenAI-style
(``{"error": {"message": str, "type": str, ...}}``); only 200 for a good one; never a 5xx (503 only
while the engine is dead, which the fuzzer must not cause), never a hang, never a dropped connection;
at the end ``/health`` is 200 and a valid request still gets 200.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, seed, settings

from bench.reliability.fuzz_cases import Case, families, valid_body


@dataclass
class FuzzReport:
    """What was sent and what came back, by case kind and status."""

    sent: int = 0
    by_status: collections.Counter[int] = field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    by_family: dict[str, int] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)
    health_after: int = 0
    valid_after: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations and self.health_after == 200 and self.valid_after == 200

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_family": self.by_family,
            "by_kind": dict(sorted(self.by_kind.items())),
            "violations": self.violations[:50],
            "violation_count": len(self.violations),
            "health_after": self.health_after,
            "valid_after": self.valid_after,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
        }


def judge(case: Case, status: int, body: bytes, streamed: bool) -> str | None:
    """Why this answer breaks the contract, or None when it keeps it."""
    if status >= 500:
        return f"{status} for a {case.kind} request"
    if status == 200:
        if streamed:
            text = body.decode(errors="replace")
            if "data: [DONE]" not in text and '"error"' not in text:
                return "stream ended without [DONE] or an error event"
        return None
    if not 400 <= status < 500:
        return f"unexpected status {status}"
    try:
        error = json.loads(body)["error"]
        if not isinstance(error.get("message"), str) or not isinstance(error.get("type"), str):
            return "error body without message/type strings"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{status} without an OpenAI-style body: {body[:120]!r}"
    return None


def send(client: httpx.Client, case: Case, report: FuzzReport) -> None:
    """One case: post it, read the whole answer (streamed or not), record the verdict."""
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    streamed = False
    try:
        with client.stream("POST", "/v1/chat/completions", content=case.body, headers=headers) as r:
            streamed = r.headers.get("content-type", "").startswith("text/event-stream")
            body = r.read()
            status = r.status_code
    except httpx.HTTPError as exc:
        report.violations.append(
            {
                "kind": case.kind,
                "why": f"{type(exc).__name__}: {exc}",
                "body": case.body[:200].decode(errors="replace"),
            }
        )
        report.sent += 1
        return
    report.sent += 1
    report.by_status[status] += 1
    report.by_kind[case.kind] += 1
    why = judge(case, status, body, streamed)
    if why is not None:
        report.violations.append(
            {"kind": case.kind, "why": why, "body": case.body[:200].decode(errors="replace")}
        )


def run_fuzz(
    base_url: str,
    *,
    requests: int,
    api_key: str | None = None,
    seed_value: int = 0,
    timeout: float = 60.0,
    progress: Callable[[FuzzReport], None] | None = None,
) -> FuzzReport:
    """Send ``requests`` generated cases, an equal share per family (reproducible from ``seed_value``),
    then check that the server is whole."""
    report = FuzzReport()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.monotonic()
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client:
        share = max(1, requests // len(families()))
        for name, strategy in families().items():

            @seed(seed_value)
            @settings(
                max_examples=share,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def one(case: Case) -> None:
                send(client, case, report)
                if progress is not None and report.sent % 500 == 0:
                    progress(report)

            one()
            report.by_family[name] = report.sent - sum(report.by_family.values())
        report.health_after = client.get("/health").status_code
        report.valid_after = client.post("/v1/chat/completions", json=valid_body()).status_code
    report.seconds = time.monotonic() - start
    return report
