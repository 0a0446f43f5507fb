"""Table tests for the pure fallback decision (DESIGN.md 3.3, issue 5)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from omega_operator import conditions as c
from omega_operator import status as st
from omega_operator.api import parse_spec
from omega_operator.fallback import (
    RETRY_ANNOTATION,
    Action,
    Decision,
    FallbackRecord,
    FallbackSpec,
    PodView,
    Reason,
    decide,
    fallback_spec,
)
from omega_operator.health_report import ProbeOutcome, ProbeResult, parse_report

FLASH = "reg.example/omega-vlm-server:v1-flash"
SDPA = "reg.example/omega-vlm-server:v1-sdpa"
NOW = datetime(2026, 11, 24, 21, 0, 0, tzinfo=UTC)
FA_ERROR = "ImportError: FlashAttention2 has been toggled on, but it cannot be used: flash_attn not installed"


def spec(**kw: Any) -> FallbackSpec:
    base: dict[str, Any] = {"attention": "auto", "flash_image": FLASH, "sdpa_image": SDPA}
    base.update(kw)
    return FallbackSpec(**base)


def pod(
    name: str,
    *,
    image: str = FLASH,
    attn: str | None = "flash_attention_2",
    phase: str = "Running",
    node: str | None = "h100-sxm-0",
    restarts: int = 0,
    ready: bool = True,
    waiting: tuple[str, str] | None = None,
    last_terminated: dict[str, Any] | None = None,
    terminated: dict[str, Any] | None = None,
    unschedulable: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    """A pod object in API JSON shape, the way the kube layer hands it over."""
    state: dict[str, Any] = {"running": {"startedAt": "2026-11-24T20:59:00Z"}}
    if waiting:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    if terminated:
        state = {"terminated": terminated}
    env = [{"name": "MODEL_PATH", "value": "file:///m"}]
    if attn is not None:
        env.append({"name": "ATTN_IMPL", "value": attn})
    conditions = []
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    meta: dict[str, Any] = {"name": name, "namespace": "ml"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T20:59:30Z"
    cstatus = {
        "name": "server",
        "image": image,
        "ready": ready,
        "restartCount": restarts,
        "state": state,
        "lastState": {"terminated": last_terminated} if last_terminated else {},
    }
    return {
        "metadata": meta,
        "spec": {
            "nodeName": None if unschedulable else node,
            "containers": [
                {"name": "server", "image": image, "env": env, "ports": [{"containerPort": 8000}]}
            ],
        },
        "status": {
            "phase": "Pending" if unschedulable else phase,
            "podIP": None if unschedulable else "127.0.0.9",
            "conditions": conditions,
            "containerStatuses": [] if unschedulable else [cstatus],
        },
    }


def crash_looping(name: str, restarts: int, last_terminated: dict[str, Any]) -> dict[str, Any]:
    """A flash pod in CrashLoopBackOff after ``restarts`` restarts; ``last_terminated`` its last exit."""
    return pod(
        name,
        restarts=restarts,
        ready=False,
        waiting=("CrashLoopBackOff", "back-off"),
        last_terminated=last_terminated,
    )


def health(
    *,
    attn: str = "flash_attention_2",
    requested: str = "flash_attention_2",
    loaded: bool = True,
    error: str | None = None,
    ready: bool = True,
    status: str | None = None,
    engine_error: str | None = None,
) -> ProbeResult:
    body: dict[str, Any] = {
        "status": status or ("ready" if ready else "loading"),
        "ready": ready,
        "attn": attn,
        "attn_requested": requested,
        "flash_attn": {
            "available": loaded,
            "loaded": loaded,
            "version": "2.8.3" if loaded else None,
            "error": error,
        },
        "model": "tiny",
        "dtype": "torch.float32",
        "devices": ["cpu"],
        "device_names": ["cpu"],
        "batch": {"max_batch_size": 4},
        "max_model_length": 8192,
        "version": "0.1.0",
        "something_new": {"servers": "may add fields"},
    }
    if engine_error:
        body["error"] = engine_error
    report = parse_report(body)
    assert report is not None
    return ProbeResult("?", ProbeOutcome.REPORT, 200 if ready else 503, report=report)


GOOD = health()
SDPA_OK = health(attn="sdpa", requested="sdpa", loaded=False)
FLASH_BAD = health(attn="sdpa", loaded=False, error=FA_ERROR)
LOADING = health(attn="flash_attention_2", loaded=False, ready=False)
UNREACHABLE = ProbeResult("?", ProbeOutcome.UNREACHABLE, error="ClientConnectorError: connection refused")


@dataclass
class Case:
    id: str
    pods: list[dict[str, Any]]
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    spec: FallbackSpec = field(default_factory=spec)
    status: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    action: Action = Action.KEEP
    attention: str = "auto"
    reason: str = Reason.NOT_DEGRADED
    degraded: bool = False
    headline: Reason | None = None
    message_has: str | None = None
    pod: str | None = None


def rolled_back(**kw: Any) -> dict[str, Any]:
    rec = {
        "at": "2026-11-24T20:00:00Z",
        "fromImage": FLASH,
        "toImage": SDPA,
        "reason": "FlashAttentionLoadFailed",
        "message": FA_ERROR,
        "pod": "old-pod",
        "node": "h100-sxm-0",
        "attention": "auto",
    }
    rec.update(kw)
    return {"requested": "auto", "active": "sdpa", "fallback": rec}


CRASH_FA = {
    "reason": "Error",
    "exitCode": 1,
    "message": "INFO loading tiny\nTraceback (most recent call last):\n  ...\n"
    "fatal: flash-attn: ImportError: flash_attn_2_cuda.cpython-312: undefined symbol\n",
}
CRASH_PLAIN = {"reason": "Error", "exitCode": 1, "message": "Segmentation fault (core dumped)"}
OOM = {"reason": "OOMKilled", "exitCode": 137, "message": "attn_requested=flash_attention_2 loading weights"}
MODEL_FAIL = {
    "reason": "Error",
    "exitCode": 1,
    "message": "INFO ATTN_IMPL=flash_attention_2\nfatal: MODEL_PATH file:///nope: no such directory",
}
KV_TOO_SMALL = {
    "reason": "Error",
    "exitCode": 1,
    "message": "fatal: kv_cache_too_small: one sequence of MAX_MODEL_LENGTH=262144 tokens needs 24.00 GiB",
}

CASES = [
    Case("all-good", [pod("a"), pod("b")], {"a": GOOD, "b": GOOD}),
    Case(
        "one-bad-among-good",
        [pod("a"), pod("b"), pod("c")],
        {"a": GOOD, "b": FLASH_BAD, "c": GOOD},
        action=Action.ROLLBACK,
        attention="sdpa",
        reason=Reason.FLASH_LOAD_FAILED,
        degraded=True,
        message_has="FlashAttention2 has been toggled on",
        pod="b",
    ),
    Case("loading-503", [pod("a", ready=False)], {"a": LOADING}),
    Case("unreachable", [pod("a", ready=False)], {"a": UNREACHABLE}),
    Case("no-probe-yet", [pod("a", ready=False)], {}),
    Case(
        "ready-on-sdpa-without-error",
        [pod("a")],
        {"a": health(attn="sdpa", loaded=False, error=None)},
        action=Action.ROLLBACK,
        attention="sdpa",
        reason=Reason.FLASH_LOAD_FAILED,
        degraded=True,
        message_has="attn=sdpa",
    ),
    Case(
        "auto-requested-on-server",
        [pod("a", attn="auto")],
        {"a": health(attn="sdpa", requested="auto", loaded=False, error=FA_ERROR)},
        action=Action.ROLLBACK,
        attention="sdpa",
        reason=Reason.FLASH_LOAD_FAILED,
        degraded=True,
    ),
    Case(
        "restarts-below-threshold",
        [crash_looping("a", 2, CRASH_PLAIN)],
        {"a": UNREACHABLE},
        headline=Reason.CRASH_LOOP,
    ),
    Case(
        "restarts-at-threshold",
        [crash_looping("a", 3, CRASH_PLAIN)],
        {"a": UNREACHABLE},
        action=Action.ROLLBACK,
        attention="sdpa",
        reason=Reason.FLASH_CRASH_LOOP,
        degraded=True,
        message_has="restarted 3 times",
    ),
    Case(
        "threshold-from-spec",
        [pod("a", restarts=3, ready=False, last_terminated=CRASH_PLAIN)],
        spec=spec(crash_loop_restarts=5),
        headline=Reason.CRASH_LOOP,
    ),
    Case(
        "termination-names-flash-attn",
        [crash_looping("a", 1, CRASH_FA)],
        {"a": UNREACHABLE},
        action=Action.ROLLBACK,
        attention="sdpa",
        reason=Reason.FLASH_CRASH_LOOP,
        degraded=True,
        message_has="fatal: flash-attn: ImportError",
    ),
    Case(
        "current-terminated-names-flash-attn",
        [pod("a", ready=False, terminated=CRASH_FA)],
        action=Action.ROLLBACK,
        attention="sdpa",
        reason=Reason.FLASH_CRASH_LOOP,
        degraded=True,
    ),
    Case(
        "oom-killed-is-not-flash",
        [crash_looping("a", 4, OOM)],
        {"a": UNREACHABLE},
        headline=Reason.OOM_KILLED,
    ),
    Case(
        "model-load-failure-is-not-flash",
        [crash_looping("a", 5, MODEL_FAIL)],
        headline=Reason.MODEL_LOAD_FAILED,
    ),
    Case(
        "kv-cache-too-small-is-its-own-reason-not-flash",
        [crash_looping("a", 5, KV_TOO_SMALL)],
        headline=Reason.KV_CACHE_TOO_SMALL,
    ),
    Case(
        "image-pull-backoff",
        [pod("a", ready=False, waiting=("ImagePullBackOff", f'Back-off pulling image "{FLASH}"'))],
        headline=Reason.IMAGE_PULL,
    ),
    Case(
        "err-image-pull",
        [pod("a", ready=False, waiting=("ErrImagePull", "not found"))],
        headline=Reason.IMAGE_PULL,
    ),
    Case(
        "pending-unschedulable",
        [pod("a", unschedulable="0/4 nodes are available: 2 Insufficient nvidia.com/gpu.")],
        headline=Reason.UNSCHEDULABLE,
    ),
    Case("pending-just-created", [pod("a", phase="Pending", ready=False, node=None)]),
    Case(
        "server-reports-model-failure",
        [pod("a", ready=False)],
        {
            "a": health(
                ready=False, loaded=False, status="error", engine_error="OSError: model weights missing"
            )
        },
        headline=Reason.MODEL_LOAD_FAILED,
    ),
    Case(
        "server-load-failed-naming-flash-attn",
        [pod("a", ready=False)],
        {
            "a": health(
                ready=False,
                loaded=False,
                status="failed",
                engine_error="ValueError: FlashAttention2 is not supported",
            )
        },
        action=Action.ROLLBACK,
        attention="sdpa",
        reason=Reason.FLASH_LOAD_FAILED,
        degraded=True,
        message_has="not supported",
    ),
    Case(
        "after-operator-restart-status-says-rolled-back",
        [pod("s1", image=SDPA, attn="sdpa"), pod("f-old", deleting=True)],
        {"s1": SDPA_OK, "f-old": FLASH_BAD},
        status=rolled_back(),
        attention="sdpa",
        reason=Reason.FLASH_LOAD_FAILED,
        degraded=True,
        pod="old-pod",
    ),
    Case(
        "sticky-even-with-a-lingering-bad-flash-pod",
        [pod("s1", image=SDPA, attn="sdpa"), pod("f")],
        {"s1": SDPA_OK, "f": FLASH_BAD},
        status=rolled_back(),
        attention="sdpa",
        reason=Reason.FLASH_LOAD_FAILED,
        degraded=True,
        pod="old-pod",
    ),
    Case(
        "retry-annotation-new-value",
        [pod("s1", image=SDPA, attn="sdpa")],
        {"s1": SDPA_OK},
        status=rolled_back(),
        annotations={RETRY_ANNOTATION: "1"},
        action=Action.RESET,
        reason=Reason.RETRYING_FLASH,
        message_has="retry requested",
    ),
    Case(
        "retry-annotation-already-consumed",
        [pod("s1", image=SDPA, attn="sdpa")],
        {"s1": SDPA_OK},
        status={**rolled_back(), "retryFlash": "1"},
        annotations={RETRY_ANNOTATION: "1"},
        attention="sdpa",
        reason=Reason.FLASH_LOAD_FAILED,
        degraded=True,
    ),
    Case(
        "flash-image-changed",
        [pod("s1", image=SDPA, attn="sdpa")],
        {"s1": SDPA_OK},
        status=rolled_back(fromImage="reg.example/omega-vlm-server:v0-flash"),
        action=Action.RESET,
        reason=Reason.RETRYING_FLASH,
        message_has="flash image changed",
    ),
    Case(
        "attention-changed",
        [pod("s1", image=SDPA, attn="sdpa")],
        {"s1": SDPA_OK},
        spec=spec(attention="flash_attention_2"),
        status=rolled_back(),
        action=Action.RESET,
        attention="flash_attention_2",
        reason=Reason.RETRYING_FLASH,
        message_has="attention changed",
    ),
    Case(
        "old-flash-image-pods-are-not-evidence",
        [pod("old", image="reg.example/omega-vlm-server:v0-flash"), pod("new")],
        {"old": FLASH_BAD, "new": LOADING},
    ),
    Case(
        "fallback-disabled",
        [pod("a"), pod("b")],
        {"a": FLASH_BAD, "b": GOOD},
        spec=spec(enabled=False),
        action=Action.DEGRADED,
        attention="auto",
        reason=Reason.FLASH_LOAD_FAILED,
        degraded=True,
        message_has="fallback disabled",
    ),
    Case(
        "sdpa-requested",
        [pod("s1", image=SDPA, attn="sdpa")],
        {"s1": SDPA_OK},
        spec=spec(attention="sdpa"),
        attention="sdpa",
        reason=Reason.SDPA_REQUESTED,
    ),
    Case(
        "sdpa-requested-clears-an-old-fallback",
        [pod("s1", image=SDPA, attn="sdpa")],
        {"s1": SDPA_OK},
        spec=spec(attention="sdpa"),
        status=rolled_back(),
        attention="sdpa",
        reason=Reason.SDPA_REQUESTED,
    ),
    Case(
        "sdpa-pod-crash-with-flash-words-is-not-a-fallback",
        [pod("s1", image=SDPA, attn="sdpa", restarts=4, last_terminated=CRASH_FA)],
        headline=Reason.CRASH_LOOP,
    ),
]


def run(case: Case) -> Decision:
    views = [PodView.from_pod(p) for p in case.pods]
    return decide(case.spec, case.status, views, case.probes, annotations=case.annotations, now=NOW)


RAW_SPEC: dict[str, Any] = {
    "model": {"name": "tiny", "uri": "file:///m"},
    "image": {"repository": "reg.example/omega-vlm-server", "tag": "v1"},
}
MINIMAL_SPEC = parse_spec(RAW_SPEC)


def status_of(d: Decision) -> tuple[st.Verdict, dict[str, Any]]:
    """What the reconcile does with a decision: its verdict, and the status computed from it (for a
    Deployment that is not rolled out yet, so the Ready condition names the headline problem)."""
    verdict = st.verdict(MINIMAL_SPEC, d)
    status = st.compute(
        spec=MINIMAL_SPEC,
        generation=1,
        old={},
        attention=verdict.attention,
        variant=d.variant,
        image="img",
        deployment=None,
        problems=verdict.problems,
        flash=verdict.flash,
        now="2026-11-24T21:00:00Z",
    )
    return verdict, status


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision_table(case: Case) -> None:
    d = run(case)
    assert d.action == case.action
    assert d.attention == case.attention
    assert d.reason == case.reason
    # Through the path the reconcile takes: the decision's verdict, then the computed status.
    verdict, status = status_of(d)
    assert verdict.flash.degraded is case.degraded
    degraded = c.get(status["conditions"], c.FLASH_DEGRADED)
    assert degraded is not None and degraded["status"] == ("True" if case.degraded else "False")
    assert degraded["reason"] == case.reason
    headline = verdict.problems[0] if verdict.problems else None
    if case.headline is None:
        assert headline is None, headline
    else:
        assert headline is not None and headline.reason == case.headline, d.findings
        ready = c.get(status["conditions"], c.READY)
        assert ready is not None and ready["reason"] == case.headline
    if case.message_has:
        assert case.message_has in d.message, d.message
    if case.pod:
        assert d.fallback is not None and d.fallback.pod == case.pod
    # A rollback always carries its record; only a rollback makes a new one.
    if d.action is Action.ROLLBACK:
        assert d.fallback is not None and d.fallback.at == "2026-11-24T21:00:00Z"
    if d.action in (Action.RESET, Action.DEGRADED) or d.attention != "sdpa":
        assert d.fallback is None
    if case.spec.attention == "sdpa":  # an old record is dropped, nothing is retried
        assert d.fallback is None and d.status_attention()["fallback"] is None


def test_rollback_record_names_pod_node_image_and_the_pods_own_error() -> None:
    d = run(CASES[1])
    assert d.fallback is not None
    st = d.status_attention()["fallback"]
    assert st == {
        "at": "2026-11-24T21:00:00Z",
        "fromImage": FLASH,
        "toImage": SDPA,
        "reason": "FlashAttentionLoadFailed",
        "message": FA_ERROR,
        "pod": "b",
        "node": "h100-sxm-0",
        "attention": "auto",
    }


def test_operator_restart_after_rollback_gives_no_second_rollback() -> None:
    """Feed the status written by a rollback back in: the next decision (a fresh process) keeps it."""
    first = run(CASES[1])
    status = {"requested": "auto", **first.status_attention()}
    pods = [PodView.from_pod(pod("s1", image=SDPA, attn="sdpa")), PodView.from_pod(pod("b"))]
    again = decide(spec(), status, pods, {"s1": SDPA_OK, "b": FLASH_BAD}, now=NOW)
    assert again.action is Action.KEEP
    assert again.attention == "sdpa"
    assert again.fallback == first.fallback


def test_retry_is_consumed_once_and_a_second_failure_rolls_back_again() -> None:
    status = rolled_back()
    ann = {RETRY_ANNOTATION: "2026-11-24T21:00"}
    reset = decide(spec(), status, [], {}, annotations=ann, now=NOW)
    assert reset.action is Action.RESET and reset.attention == "auto"
    st = {"requested": "auto", **reset.status_attention()}
    assert st["fallback"] is None and st["retryFlash"] == "2026-11-24T21:00"
    # The flash variant fails again: a new rollback, and the consumed value does not retry again.
    again = decide(spec(), st, [PodView.from_pod(pod("n"))], {"n": FLASH_BAD}, annotations=ann, now=NOW)
    assert again.action is Action.ROLLBACK and again.retry_flash == "2026-11-24T21:00"
    st2 = {"requested": "auto", **again.status_attention()}
    later = decide(spec(), st2, [], {}, annotations=ann, now=NOW)
    assert later.action is Action.KEEP and later.attention == "sdpa"


def test_retry_annotation_without_fallback_is_consumed_and_does_not_retry_later() -> None:
    ann = {RETRY_ANNOTATION: "x"}
    d = decide(spec(), None, [PodView.from_pod(pod("a"))], {"a": GOOD}, annotations=ann, now=NOW)
    assert d.action is Action.KEEP and d.retry_flash == "x"
    st = {"requested": "auto", **d.status_attention()}
    rb = decide(spec(), st, [PodView.from_pod(pod("a"))], {"a": FLASH_BAD}, annotations=ann, now=NOW)
    assert rb.action is Action.ROLLBACK
    st2 = {"requested": "auto", **rb.status_attention()}
    assert decide(spec(), st2, [], {}, annotations=ann, now=NOW).attention == "sdpa"


@pytest.mark.parametrize(
    ("probes", "active", "counts", "unknown"),
    [
        ({"a": SDPA_OK, "b": SDPA_OK}, "sdpa", {"sdpa": 2}, 0),
        ({"a": GOOD, "b": GOOD}, "flash_attention_2", {"flash_attention_2": 2}, 0),
        ({"a": GOOD, "b": FLASH_BAD}, "mixed", {"flash_attention_2": 1, "sdpa": 1}, 0),
        ({"a": GOOD, "b": LOADING}, "flash_attention_2", {"flash_attention_2": 1}, 1),
        ({"a": UNREACHABLE}, "unknown", {}, 2),
    ],
)
def test_attention_summary(
    probes: dict[str, ProbeResult], active: str, counts: dict[str, int], unknown: int
) -> None:
    pods = [PodView.from_pod(pod("a")), PodView.from_pod(pod("b"))]
    d = decide(spec(enabled=False), None, pods, probes, now=NOW)
    assert d.summary.active == active
    assert dict(d.summary.counts) == counts
    assert d.summary.unknown == unknown
    assert d.status_attention()["active"] == active


def test_flash_errors_are_summarised_per_distinct_message() -> None:
    other = health(attn="sdpa", loaded=False, error="RuntimeError: FlashAttention only supports Ampere GPUs")
    pods = [PodView.from_pod(pod(n)) for n in ("a", "b", "c", "d")]
    d = decide(spec(), None, pods, {"a": FLASH_BAD, "b": FLASH_BAD, "c": other, "d": GOOD}, now=NOW)
    assert d.status_attention()["flashErrors"] == [
        {"message": FA_ERROR, "pods": ["a", "b"], "count": 2},
        {"message": "RuntimeError: FlashAttention only supports Ampere GPUs", "pods": ["c"], "count": 1},
    ]


def test_long_messages_are_clipped() -> None:
    huge = health(attn="sdpa", loaded=False, error="ImportError: " + "x" * 5000)
    d = decide(spec(), None, [PodView.from_pod(pod("a"))], {"a": huge}, now=NOW)
    assert d.fallback is not None and len(d.fallback.message) <= 1024


def test_pod_view_reads_the_pod_object() -> None:
    v = PodView.from_pod(pod("a", restarts=2, ready=False, last_terminated=CRASH_FA))
    assert (v.name, v.node, v.image, v.attn_impl, v.restarts) == (
        "a",
        "h100-sxm-0",
        FLASH,
        "flash_attention_2",
        2,
    )
    assert v.last_terminated is not None and v.last_terminated.exit_code == 1
    u = PodView.from_pod(pod("u", unschedulable="Insufficient nvidia.com/gpu"))
    assert u.unschedulable == "Insufficient nvidia.com/gpu" and u.node is None


def test_spec_adapter_reads_the_validated_spec() -> None:
    """The decision's view of a spec, made the way the reconcile makes it (parse_spec, then
    fallback_spec with the builders' defaults and image rule)."""

    def view(**fields: Any) -> FallbackSpec:
        return fallback_spec(parse_spec({**RAW_SPEC, **fields}))

    s = view(attention="auto", fallback={"enabled": False, "crashLoopRestarts": 7})
    assert (s.enabled, s.crash_loop_restarts, s.attention) == (False, 7, "auto")
    assert (s.flash_image, s.sdpa_image) == (FLASH, SDPA)
    m = view(attention="flash_attention_2", fallback={"enabled": True, "crashLoopRestarts": 2})
    assert (m.enabled, m.crash_loop_restarts, m.attention) == (True, 2, "flash_attention_2")
    d = view()  # optional fields left unset are None: the defaults apply
    assert (d.enabled, d.crash_loop_restarts, d.attention) == (True, 3, "auto")
    n = view(fallback={"enabled": None})
    assert n.enabled is True


def test_record_round_trip_and_legacy_record_without_attention() -> None:
    rec = FallbackRecord.from_status(rolled_back()["fallback"])
    assert rec is not None and FallbackRecord.from_status(rec.to_status()) == rec
    legacy = {k: v for k, v in rolled_back()["fallback"].items() if k != "attention"}
    r2 = FallbackRecord.from_status(legacy)
    assert r2 is not None and r2.applies_to(spec())
    assert FallbackRecord.from_status({}) is None and FallbackRecord.from_status(None) is None


def test_decisions_on_the_real_servers_health_bodies() -> None:
    """One health contract: bodies made by omega_server's own code, read by the operator's parser."""
    from omega_server.state import ServerState

    from tests.contracts.server_bodies import server_config

    state = ServerState(server_config("flash_attention_2"))

    def probe() -> ProbeResult:
        body = state.health()
        report = parse_report(json.dumps(body))
        assert report is not None, body
        return ProbeResult("a", ProbeOutcome.REPORT, 200 if body["ready"] else 503, report=report)

    pods = [PodView.from_pod(pod("a", ready=False))]
    loading = decide(spec(), None, pods, {"a": probe()}, now=NOW)
    assert loading.action is Action.KEEP and not loading.problems
    state.fail("fatal: flash-attn: ImportError: flash_attn_2_cuda: undefined symbol")
    failed = decide(spec(), None, pods, {"a": probe()}, now=NOW)
    assert failed.action is Action.ROLLBACK and failed.reason == Reason.FLASH_LOAD_FAILED
    assert failed.fallback is not None and "undefined symbol" in failed.fallback.message
