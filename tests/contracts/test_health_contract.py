"""The /health contract end to end: what the server builds is what the operator reads (DESIGN.md 3.2)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from omega_operator.health_report import (
    FLASH_BACKEND,
    FLASH_ERROR_KINDS,
    FLASH_REQUESTS,
    OUT_OF_MEMORY_KIND,
    FlashAttnInfo,
    HealthReport,
    parse_report,
)
from omega_server import attention, flash_failure, settings

from tests.contracts import server_bodies as sb

BODIES = {
    "ready-after-flash-failure": sb.READY_BODY,
    "ready-after-flash-oom": sb.OOM_BODY,
    "ready-on-flash": sb.FLASH_BODY,
    "loading": sb.LOADING_BODY,
    "failed": sb.FAILED_BODY,
    "dead": sb.DEAD_BODY,
}


@pytest.mark.parametrize("name", sorted(BODIES))
def test_every_field_the_operator_reads_is_in_the_servers_body(name: str) -> None:
    """The report model ignores unknown fields and defaults missing ones, so a field the server
    renamed or dropped would pass silently: each one the operator declares must be sent."""
    body = BODIES[name]
    assert set(HealthReport.model_fields) <= set(body), set(HealthReport.model_fields) - set(body)
    if body["flash_attn"] is not None:
        assert set(FlashAttnInfo.model_fields) <= set(body["flash_attn"])


@pytest.mark.parametrize("name", sorted(BODIES))
@pytest.mark.parametrize("wire", ["bytes", "text", "mapping"])
def test_the_operator_reads_the_servers_body_as_sent(name: str, wire: str) -> None:
    body = BODIES[name]
    raw: Any = {"bytes": json.dumps(body).encode(), "text": json.dumps(body), "mapping": body}[wire]
    report = parse_report(raw)
    assert report is not None
    for field in ("status", "ready", "attn", "attn_requested", "model", "dtype", "error", "version"):
        assert getattr(report, field) == body[field], field
    assert report.devices == body["devices"] and report.device_names == body["device_names"]
    flash = body["flash_attn"]
    if flash is None:  # not known yet: the operator reads "not loaded, no error"
        assert report.flash_attn == FlashAttnInfo()
    else:
        assert report.flash_attn.model_dump() == {k: flash[k] for k in FlashAttnInfo.model_fields}


def test_a_flash_failure_the_server_reports_is_one_the_operator_sees() -> None:
    failed = parse_report(sb.READY_BODY)
    assert failed is not None and failed.ready and failed.attn == "sdpa"
    assert failed.flash_requested and failed.flash_failed
    assert failed.flash_error == sb.FLASH_IMPORT_ERROR
    on_flash = parse_report(sb.FLASH_BODY)
    assert on_flash is not None and on_flash.attn == FLASH_BACKEND
    assert on_flash.flash_requested and not on_flash.flash_failed
    loading = parse_report(sb.LOADING_BODY)
    assert loading is not None and not loading.ready and not loading.flash_failed


@pytest.mark.parametrize("attn_impl", list(settings.AttnImpl.__args__))  # type: ignore[attr-defined]
def test_both_sides_agree_which_attn_impl_values_ask_for_flash(attn_impl: str) -> None:
    """The server's FLASH_REQUESTS (what tries flash-attn first) and the operator's are one set."""
    assert (attn_impl in attention.FLASH_REQUESTS) == (attn_impl in FLASH_REQUESTS)
    assert attention.FLASH == FLASH_BACKEND
    body = sb.body("loading", attn_impl=attn_impl)
    report = parse_report(body)
    assert report is not None and report.attn_requested == attn_impl
    assert report.flash_requested == (attn_impl in attention.FLASH_REQUESTS)


def test_the_operator_accepts_every_attn_impl_the_server_accepts() -> None:
    assert set(settings.AttnImpl.__args__) == set(attention.CHOICES)  # type: ignore[attr-defined]
    assert set(attention.CHOICES) >= FLASH_REQUESTS


def test_both_sides_agree_which_error_kinds_are_flash_faults() -> None:
    """Only these kinds roll back (the operator), and they are the ones the server calls flash faults."""
    assert flash_failure.FLASH_KINDS == FLASH_ERROR_KINDS
    assert OUT_OF_MEMORY_KIND in flash_failure.ERROR_KINDS and OUT_OF_MEMORY_KIND not in FLASH_ERROR_KINDS
    failed = parse_report(sb.READY_BODY)
    assert failed is not None and failed.flash_attn.error_kind == "not_installed"
    assert failed.flash_attn.flash_fault
    oom = parse_report(sb.OOM_BODY)
    assert oom is not None and oom.flash_failed and oom.flash_attn.error_kind == OUT_OF_MEMORY_KIND
    assert not oom.flash_attn.flash_fault


@pytest.mark.parametrize("name", sorted(BODIES))
def test_every_body_reports_the_kv_cache(name: str) -> None:
    """`kv` (slots, token capacity, lowered, sized from memory) is in every phase's body; null before load."""
    kv = BODIES[name]["kv"]
    assert set(kv) == {"slots", "token_capacity", "lowered", "sized_from_memory", "budget_bytes"}
    if name == "loading" or name == "failed":
        assert set(kv.values()) == {None}
    else:
        assert kv["slots"] == 4 and kv["token_capacity"] == 4 * 8192 and kv["lowered"] is False
