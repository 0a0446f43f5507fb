"""The /health contract as the operator reads it: parse_report and what a report means."""

from __future__ import annotations

import json
from typing import Any

import pytest
from omega_operator.health_report import FLASH_REQUESTS, HealthReport, ProbeOutcome, ProbeResult, parse_report

from tests.omega_operator.health_bodies import LOADING_BODY, READY_BODY


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", json.dumps({"ready": "perhaps"}).encode()],
)
def test_parse_report_rejects_junk(body: bytes) -> None:
    assert parse_report(body) is None


def test_parse_report_tolerates_missing_and_extra_fields() -> None:
    r = parse_report(json.dumps({"ready": True, "attn": "sdpa", "new_field": 1}))
    assert r is not None and r.ready and r.attn == "sdpa" and not r.flash_attn.loaded


def test_bytes_text_and_mapping_give_the_same_report() -> None:
    as_text = json.dumps(READY_BODY)
    reports = [parse_report(as_text.encode()), parse_report(as_text), parse_report(READY_BODY)]
    assert reports[0] is not None and reports[0] == reports[1] == reports[2]


def test_a_flash_load_failure_is_told_in_the_servers_own_words() -> None:
    r = parse_report(READY_BODY)
    assert r is not None and r.flash_requested and r.flash_failed
    assert r.flash_error == READY_BODY["flash_attn"]["error"]


def test_a_loading_server_is_no_flash_failure_yet() -> None:
    r = parse_report(LOADING_BODY)  # nulls for what it does not know yet
    assert r is not None and not r.ready and r.flash_requested and not r.flash_failed
    assert r.devices == [] and r.flash_attn.error is None


@pytest.mark.parametrize(
    ("changes", "failed"),
    [
        ({"attn_requested": "sdpa"}, False),  # flash not asked for: nothing failed
        ({"flash_attn": {"loaded": True, "error": None}, "attn": "flash_attention_2"}, False),
        ({"flash_attn": {"loaded": False, "error": None}}, True),  # ready on sdpa although flash was asked
        ({"attn_requested": "auto"}, True),
    ],
)
def test_flash_failed(changes: dict[str, Any], failed: bool) -> None:
    r = parse_report({**READY_BODY, **changes})
    assert r is not None and r.flash_failed is failed
    if failed and r.flash_attn.error is None:
        assert r.flash_error == "attn_requested=flash_attention_2 but the server runs attn=sdpa"


def test_flash_requests_are_the_flash_attn_impl_values() -> None:
    assert {"auto", "flash_attention_2"} == FLASH_REQUESTS
    assert all(HealthReport(attn_requested=v).flash_requested for v in FLASH_REQUESTS)
    assert not HealthReport(attn_requested="sdpa").flash_requested


def test_probe_result_readiness_and_metric_label() -> None:
    ready = ProbeResult("a", ProbeOutcome.REPORT, 200, report=HealthReport(ready=True))
    loading = ProbeResult("a", ProbeOutcome.REPORT, 503, report=HealthReport(ready=False))
    gone = ProbeResult("a", ProbeOutcome.UNREACHABLE, error="refused")
    assert (ready.ready, loading.ready, gone.ready) == (True, False, False)
    assert [r.metric_result for r in (ready, loading, gone)] == ["ready", "not_ready", "unreachable"]
