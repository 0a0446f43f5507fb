"""Issue 12, part 4 (never blind): HealthProbed, counts.unknown, and what Ready/FlashAttentionDegraded say."""

from __future__ import annotations

from typing import Any

from omega_operator import conditions as c
from omega_operator import status as st
from omega_operator.fallback import PodView, decide
from omega_operator.health_probed import ProbeLedger
from omega_operator.health_report import ProbeOutcome, ProbeResult

from tests.omega_operator.test_fallback import GOOD, MINIMAL_SPEC, NOW, pod, spec

INTERVAL = 2.0
TIMEOUT = ProbeResult("?", ProbeOutcome.UNREACHABLE, error="timed out after 3s (http://10.0.3.7:8000/health)")


def pods(*names: str) -> list[dict[str, Any]]:
    return [pod(n, ready=True) for n in names]


def test_all_pods_answering_is_true_and_a_silent_pod_turns_false_after_three_intervals() -> None:
    ledger = ProbeLedger(INTERVAL)
    ps = pods("a", "b", "c")
    ok = ledger.observe("u", ps, {"a": GOOD, "b": GOOD, "c": GOOD}, now=0.0)
    assert ok.ok and ok.reason == "AllPodsAnswered" and "3/3" in ok.message
    # a and b stop answering: still True inside the window ...
    half = ledger.observe("u", ps, {"a": TIMEOUT, "b": TIMEOUT, "c": GOOD}, now=5.0)
    assert half.ok
    # ... False once three intervals have passed, with the counts and the first error.
    blind = ledger.observe("u", ps, {"a": TIMEOUT, "b": TIMEOUT, "c": GOOD}, now=6.5)
    assert not blind.ok and blind.reason == "PodsUnreachable" and blind.unreachable == 2
    assert blind.message.startswith("2/3 pods unreachable"), blind.message
    assert "pod a: timed out after 3s (http://10.0.3.7:8000/health)" in blind.message
    # They answer again: True at once.
    assert ledger.observe("u", ps, {"a": GOOD, "b": GOOD, "c": GOOD}, now=7.0).ok


def test_a_new_pod_has_the_window_to_answer_and_gone_pods_are_forgotten() -> None:
    ledger = ProbeLedger(INTERVAL)
    assert ledger.observe("u", pods("a"), {"a": TIMEOUT}, now=0.0).ok  # just started
    assert not ledger.observe("u", pods("a"), {"a": TIMEOUT}, now=7.0).ok
    assert ledger.observe("u", pods("b"), {"b": GOOD}, now=8.0).ok
    assert set(ledger.answered["u"]) == {"b"}
    none = ledger.observe("u", [], {}, now=9.0)
    assert none.ok and none.reason == "NoRunningPods"
    ledger.forget("u")
    assert "u" not in ledger.answered


def test_blind_status_says_so_in_health_probed_ready_reason_flash_condition_and_counts() -> None:
    ledger = ProbeLedger(INTERVAL)
    ps = pods("a", "b")
    ledger.observe("u", ps, {"a": GOOD, "b": TIMEOUT}, now=0.0)
    probes = {"a": GOOD, "b": TIMEOUT}
    probed = ledger.observe("u", ps, probes, now=10.0)
    d = decide(spec(), None, [PodView.from_pod(p) for p in ps], probes, now=NOW)
    assert d.status_attention()["counts"] == {"flash_attention_2": 1, "unknown": 1}
    v = st.verdict(MINIMAL_SPEC, d)
    dep = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }
    out = st.compute(
        spec=MINIMAL_SPEC,
        generation=1,
        old=None,
        attention=v.attention,
        variant="flash",
        image="x",
        deployment=dep,
        problems=v.problems,
        flash=v.flash,
        now=c.rfc3339(NOW),
        probed=probed,
    )
    hp = c.get(out["conditions"], "HealthProbed")
    assert hp is not None and hp["status"] == "False" and hp["reason"] == "PodsUnreachable"
    assert hp["message"].startswith("1/2 pods unreachable")
    ready = c.get(out["conditions"], c.READY)
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "HealthNotProbed"
    fd = c.get(out["conditions"], c.FLASH_DEGRADED)
    assert fd is not None and fd["status"] == "Unknown" and "1/2 pods unreachable" in fd["message"]
    # Every pod answering: the usual reasons.
    ok = ledger.observe("u", ps, {"a": GOOD, "b": GOOD}, now=11.0)
    out = st.compute(
        spec=MINIMAL_SPEC,
        generation=1,
        old=out,
        attention=v.attention,
        variant="flash",
        image="x",
        deployment=dep,
        problems=v.problems,
        flash=v.flash,
        now=c.rfc3339(NOW),
        probed=ok,
    )
    assert c.get(out["conditions"], "HealthProbed")["status"] == "True"  # type: ignore[index]
    assert c.get(out["conditions"], c.READY)["reason"] == c.ALL_REPLICAS_READY  # type: ignore[index]
    assert c.get(out["conditions"], c.FLASH_DEGRADED)["status"] == "False"  # type: ignore[index]


def test_after_an_operator_restart_a_pod_silent_since_long_ago_is_unreachable_at_once() -> None:
    """The window counts from the pod's own start, not from when this process first saw it: a pod
    that was unreachable before a restart is so right after it (no True in between, no write)."""
    old = pod("a", ready=False)
    old["status"]["startTime"] = c.rfc3339(NOW.replace(hour=NOW.hour - 1))
    fresh = ProbeLedger(INTERVAL)  # a new operator process
    now = NOW.timestamp()
    assert not fresh.observe("u", [old], {"a": TIMEOUT}, now=now).ok
    young = pod("b", ready=False)
    young["status"]["startTime"] = c.rfc3339(NOW)
    assert fresh.observe("u2", [young], {"b": TIMEOUT}, now=now + 1).ok  # its own window to answer
