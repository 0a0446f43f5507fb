"""Issue 12, part 1: only flash evidence rolls back. Table tests of the classified evidence.

The server's ``flash_attn.error_kind`` on /health (bodies built by the server's own ``health_body``)
and in its fatal line, and the crash-loop window: restarts count only for a pod not Ready on flash,
all inside ``crashLoopWindowSeconds`` of its start, with no other known cause.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from omega_operator import conditions as c
from omega_operator import status as st
from omega_operator.conditions import rfc3339
from omega_operator.fallback import Action, FallbackSpec, PodView, Reason, decide
from omega_operator.fallback.nodes import is_node_scoped
from omega_operator.health_report import ProbeOutcome, ProbeResult, parse_report
from omega_server import flash_failure

from tests.contracts import server_bodies as sb
from tests.omega_operator.test_fallback import FLASH, MINIMAL_SPEC, NOW, pod, spec

OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
MODEL_FILE = "OSError: Error no file named model.safetensors found in directory /models"


def probe(body: dict[str, Any], name: str = "a") -> ProbeResult:
    report = parse_report(json.dumps(body))
    assert report is not None
    return ProbeResult(name, ProbeOutcome.REPORT, 200 if body["ready"] else 503, report=report)


def ready_after(error: str, kind: str | None = None) -> ProbeResult:
    """A server Ready on sdpa in process after its flash attempt failed with ``error`` (its own body)."""
    return probe(sb.body("ready", sb.engine_info(flash_error=error, flash_kind=kind)))


ON_FLASH = probe(sb.FLASH_BODY)
LOADING = probe(sb.LOADING_BODY)


def ago(seconds: float) -> str:
    return rfc3339(NOW - timedelta(seconds=seconds))


def restarted(
    name: str,
    *,
    restarts: int,
    started_s_ago: float,
    last_exit_s_ago: float,
    message: str = "Segmentation fault (core dumped)",
    reason: str = "Error",
    exit_code: int = 139,
    ready: bool = False,
    waiting: tuple[str, str] | None = ("CrashLoopBackOff", "back-off 40s restarting failed container"),
) -> dict[str, Any]:
    """A flash pod started ``started_s_ago``, restarted ``restarts`` times, last exit ``last_exit_s_ago``."""
    last = {
        "reason": reason,
        "exitCode": exit_code,
        "message": message,
        "startedAt": ago(last_exit_s_ago + 5),
        "finishedAt": ago(last_exit_s_ago),
    }
    obj = pod(name, restarts=restarts, ready=ready, waiting=None if ready else waiting, last_terminated=last)
    obj["status"]["startTime"] = ago(started_s_ago)
    return obj


def fatal(cause: str, kind: str, flash_error: str) -> str:
    """The server's fatal line (app.py) after a flash failure of ``kind``."""
    note = flash_failure.termination_note(kind, flash_error)
    return f"fatal: could not load the model from MODEL_PATH=/models: {cause} {note}"


@dataclass
class Case:
    id: str
    pods: list[dict[str, Any]]
    probes: dict[str, ProbeResult]
    action: Action
    reason: str  # the decision's reason (FlashAttentionDegraded), or the first problem's when KEEP
    spec: FallbackSpec | None = None


HOUR = 3600.0
CASES = [
    # /health, per kind: only the flash kinds roll back.
    *[
        Case(
            f"health-{kind}",
            [pod("a", ready=True)],
            {"a": ready_after(err, kind)},
            Action.ROLLBACK,
            Reason.FLASH_LOAD_FAILED,
        )
        for kind, err in [
            ("not_installed", sb.FLASH_IMPORT_ERROR),
            ("import_error", "ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c10"),
            ("unsupported_device", "RuntimeError: FlashAttention only supports Ampere GPUs or newer."),
            ("kernel_error", "RuntimeError: CUDA error: an illegal memory access was encountered"),
        ]
    ],
    # The first case: a CUDA OOM during the flash warm-up is not a flash failure.
    Case(
        "health-oom-at-flash-warm-up",
        [pod("a", ready=True)],
        {"a": ready_after(OOM)},
        Action.KEEP,
        Reason.OUT_OF_MEMORY,
    ),
    # ... nor a flash attempt that failed for another reason.
    Case(
        "health-other",
        [pod("a", ready=True)],
        {"a": ready_after("TypeError: bad argument", "other")},
        Action.KEEP,
        Reason.FLASH_ATTEMPT_FAILED,
    ),
    # A server too old to send a kind: its flash error still counts (as before).
    Case(
        "health-no-kind-old-server",
        [pod("a", ready=True)],
        {"a": probe({**sb.READY_BODY, "flash_attn": {**sb.READY_BODY["flash_attn"], "error_kind": None}})},
        Action.ROLLBACK,
        Reason.FLASH_LOAD_FAILED,
    ),
    # The second case: a bad model file, reported in the fatal line of a server that exits.
    Case(
        "fatal-bad-model-file",
        [
            restarted(
                "a",
                restarts=1,
                started_s_ago=60,
                last_exit_s_ago=10,
                message=fatal(MODEL_FILE, "other", MODEL_FILE),
                exit_code=1,
            )
        ],
        {"a": LOADING},
        Action.KEEP,
        Reason.MODEL_LOAD_FAILED,
    ),
    Case(
        "fatal-oom-after-flash-oom",
        [
            restarted(
                "a",
                restarts=1,
                started_s_ago=60,
                last_exit_s_ago=10,
                message=fatal(OOM, "out_of_memory", OOM),
                exit_code=1,
            )
        ],
        {"a": LOADING},
        Action.KEEP,
        Reason.OUT_OF_MEMORY,
    ),
    # sdpa ran out of memory after a flash fault: memory, not flash, stopped the server.
    Case(
        "fatal-oom-after-flash-fault",
        [
            restarted(
                "a",
                restarts=1,
                started_s_ago=60,
                last_exit_s_ago=10,
                message=fatal(OOM, "not_installed", sb.FLASH_IMPORT_ERROR),
                exit_code=1,
            )
        ],
        {"a": LOADING},
        Action.KEEP,
        Reason.OUT_OF_MEMORY,
    ),
    # A kernel error on flash poisons the CUDA context, sdpa then fails too: flash is why, at once.
    Case(
        "fatal-after-flash-kernel-error",
        [
            restarted(
                "a",
                restarts=1,
                started_s_ago=60,
                last_exit_s_ago=10,
                message=fatal(
                    "RuntimeError: CUDA error: unspecified launch failure",
                    "kernel_error",
                    "RuntimeError: CUDA error: an illegal memory access was encountered",
                ),
                exit_code=1,
            )
        ],
        {"a": LOADING},
        Action.ROLLBACK,
        Reason.FLASH_CRASH_LOOP,
    ),
    # The third case: served on flash for days, restarted 3 times an hour apart.
    Case(
        "days-on-flash-3-restarts-an-hour-apart-ready-now",
        [restarted("a", restarts=3, started_s_ago=3 * 24 * HOUR, last_exit_s_ago=HOUR, ready=True)],
        {"a": ON_FLASH},
        Action.KEEP,
        Reason.CRASH_LOOP,
    ),
    Case(
        "days-on-flash-restarting-now",
        [
            restarted(
                "a",
                restarts=3,
                started_s_ago=3 * 24 * HOUR,
                last_exit_s_ago=20,
                message="",
                reason="Error",
                exit_code=137,
            )
        ],
        {"a": LOADING},
        Action.KEEP,
        Reason.CRASH_LOOP,
    ),
    # Three quick crashes before it was ever Ready: flash evidence.
    Case(
        "three-quick-crashes-before-ready",
        [restarted("a", restarts=3, started_s_ago=120, last_exit_s_ago=10)],
        {"a": LOADING},
        Action.ROLLBACK,
        Reason.FLASH_CRASH_LOOP,
    ),
    Case(
        "two-quick-crashes-below-threshold",
        [restarted("a", restarts=2, started_s_ago=120, last_exit_s_ago=10)],
        {"a": LOADING},
        Action.KEEP,
        Reason.CRASH_LOOP,
    ),
    # Quick restarts, but Ready on flash right now (it serves flash): not evidence.
    Case(
        "quick-restarts-but-ready-on-flash",
        [restarted("a", restarts=3, started_s_ago=120, last_exit_s_ago=60, ready=True)],
        {"a": ON_FLASH},
        Action.KEEP,
        Reason.CRASH_LOOP,
    ),
    # The window is the spec's: 3 restarts over 5 minutes with a 2-minute window do not count.
    Case(
        "restarts-outside-a-short-window",
        [restarted("a", restarts=3, started_s_ago=300, last_exit_s_ago=10)],
        {"a": LOADING},
        Action.KEEP,
        Reason.CRASH_LOOP,
        spec=spec(crash_loop_window_seconds=120),
    ),
    # Quick restarts with another known cause.
    Case(
        "quick-restarts-oomkilled",
        [
            restarted(
                "a",
                restarts=3,
                started_s_ago=120,
                last_exit_s_ago=10,
                reason="OOMKilled",
                exit_code=137,
                message="",
            )
        ],
        {"a": LOADING},
        Action.KEEP,
        Reason.OOM_KILLED,
    ),
    Case(
        "quick-restarts-model-load-failure",
        [
            restarted(
                "a",
                restarts=3,
                started_s_ago=120,
                last_exit_s_ago=10,
                exit_code=1,
                message="fatal: could not load the model from MODEL_PATH=/models: OSError: no config.json",
            )
        ],
        {"a": LOADING},
        Action.KEEP,
        Reason.MODEL_LOAD_FAILED,
    ),
    Case(
        "quick-restarts-then-image-pull",
        [
            restarted(
                "a",
                restarts=3,
                started_s_ago=120,
                last_exit_s_ago=10,
                waiting=("ImagePullBackOff", "Back-off pulling image"),
            )
        ],
        {"a": LOADING},
        Action.KEEP,
        Reason.IMAGE_PULL,
    ),
    # The server's phase-failed body carries the same note: OOM there is not flash either.
    Case(
        "failed-body-oom",
        [pod("a", ready=False)],
        {"a": probe(sb.body("failed", error=fatal(OOM, "out_of_memory", OOM).removeprefix("fatal: ")))},
        Action.KEEP,
        Reason.OUT_OF_MEMORY,
    ),
    Case(
        "failed-body-flash-fault",
        [pod("a", ready=False)],
        {
            "a": probe(
                sb.body(
                    "failed",
                    error=fatal(
                        "RuntimeError: CUDA error: launch failure",
                        "kernel_error",
                        "RuntimeError: CUDA error: x",
                    ),
                )
            )
        },
        Action.ROLLBACK,
        Reason.FLASH_LOAD_FAILED,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[x.id for x in CASES])
def test_only_flash_evidence_rolls_back(case: Case) -> None:
    pods = [PodView.from_pod(p) for p in case.pods]
    d = decide(case.spec or spec(), None, pods, case.probes, now=NOW)
    if case.action is Action.ROLLBACK and any(is_node_scoped(f) for f in d.findings):
        # A node-scoped kind (fallback.nodes): the first failing node is listed and flash is tried on
        # another; the same failure on a second node, with no pod on flash, rolls the fleet back.
        assert d.action is Action.EXCLUDE and d.condition_status, (d.reason, d.message, d.findings)
        assert [n.node for n in d.bad_nodes] == [pods[0].node] and d.variant == "flash"
        moved = [replace(p, node="h100-pcie-0") for p in pods]
        d = decide(case.spec or spec(), d.status_attention(), moved, case.probes, now=NOW)
        assert len(d.bad_nodes) == 2
    assert d.action is case.action, (d.reason, d.message, d.findings)
    if case.action is Action.ROLLBACK:
        assert d.reason == case.reason and d.attention == "sdpa"
    else:
        assert d.attention == "auto" and not d.condition_status
        assert d.problems and d.problems[0].reason == case.reason, d.findings


def test_pod_view_reads_the_start_and_exit_times() -> None:
    view = PodView.from_pod(restarted("a", restarts=3, started_s_ago=120, last_exit_s_ago=10))
    assert view.start_time == NOW - timedelta(seconds=120)
    assert view.last_terminated is not None and view.last_terminated.finished_at == NOW - timedelta(
        seconds=10
    )


def test_out_of_memory_is_its_own_ready_reason_never_a_fallback() -> None:
    """A pod Ready on sdpa in process after an OOM at the flash warm-up: Ready=True OutOfMemory,
    FlashAttentionDegraded=False, the Deployment stays on the flash variant."""
    ovlm = MINIMAL_SPEC
    d = decide(spec(), None, [PodView.from_pod(pod("a", ready=True))], {"a": ready_after(OOM)}, now=NOW)
    v = st.verdict(ovlm, d)
    dep = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1},
    }
    out = st.compute(
        spec=ovlm,
        generation=1,
        old=None,
        attention=v.attention,
        variant=d.variant,
        image=FLASH,
        deployment=dep,
        problems=v.problems,
        flash=v.flash,
        now=rfc3339(NOW),
    )
    ready = next(x for x in out["conditions"] if x["type"] == c.READY)
    assert ready["status"] == "True" and ready["reason"] == "OutOfMemory", ready
    assert "out of GPU memory" in ready["message"] and "pod a" in ready["message"]
    degraded = next(x for x in out["conditions"] if x["type"] == c.FLASH_DEGRADED)
    assert degraded["status"] == "False" and d.variant == "flash"
