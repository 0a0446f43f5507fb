"""When a reconcile between probe rounds may reuse the last round's /health results."""

from __future__ import annotations

from typing import Any

from omega_operator.health_report import HealthReport, ProbeOutcome, ProbeResult
from omega_operator.probe_reuse import reusable_probes


def pod(
    name: str, *, ip: str | None = "127.0.0.2", ready: bool = False, deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def loading(name: str) -> ProbeResult:
    return ProbeResult(name, ProbeOutcome.REPORT, 503, HealthReport(status="loading", ready=False))


def serving(name: str) -> ProbeResult:
    return ProbeResult(name, ProbeOutcome.REPORT, 200, HealthReport(status="ready", ready=True, attn="sdpa"))


def test_no_earlier_round_means_probe() -> None:
    assert reusable_probes(None, [pod("a")]) is None


def test_a_round_that_still_matches_the_pods_is_reused() -> None:
    earlier = {"a": loading("a"), "b": serving("b")}
    assert reusable_probes(earlier, [pod("a"), pod("b", ready=True)]) is earlier


def test_a_pod_that_turned_ready_since_its_loading_probe_forces_a_new_round() -> None:
    assert reusable_probes({"a": loading("a")}, [pod("a", ready=True)]) is None


def test_a_new_pod_with_an_ip_forces_a_new_round_but_ipless_and_deleting_pods_do_not() -> None:
    earlier = {"a": serving("a")}
    assert reusable_probes(earlier, [pod("a", ready=True), pod("new")]) is None
    assert reusable_probes(earlier, [pod("a", ready=True), pod("pending", ip=None)]) is earlier
    assert reusable_probes(earlier, [pod("a", ready=True), pod("gone", deleting=True)]) is earlier
