"""Pod status as a kubelet writes it, from a snapshot of the pod's containers (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ContainerView:
    """What the kubelet knows about one container at one moment."""

    name: str
    image: str
    state: dict[str, Any]  # one of {"waiting": {...}}, {"running": {...}}, {"terminated": {...}}
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    container_id: str | None = None
    image_id: str | None = None


def tail_message(log: bytes, max_lines: int = 80, max_bytes: int = 2048) -> str:
    """The kubelet's FallbackToLogsOnError message: the last 80 lines, at most 2048 bytes."""
    lines = log.splitlines(keepends=True)[-max_lines:]
    data = b"".join(lines)[-max_bytes:]
    return data.decode(errors="replace")


def container_status(c: ContainerView) -> dict[str, Any]:
    """One entry of ``status.containerStatuses``."""
    out: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id or "",
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
        "state": c.state,
        "lastState": c.last_state,
    }
    if c.container_id:
        out["containerID"] = c.container_id
    return out


def pod_phase(restart_policy: str, containers: list[ContainerView]) -> str:
    """The kubelet's getPhase for regular containers."""
    running = waiting = stopped = succeeded = failed = 0
    for c in containers:
        if "running" in c.state:
            running += 1
        elif "terminated" in c.state:
            stopped += 1
            if c.state["terminated"].get("exitCode", 1) == 0:
                succeeded += 1
            else:
                failed += 1
        elif c.last_state.get("terminated"):
            stopped += 1
        else:
            waiting += 1
    if waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped > 0:
        if restart_policy == "Always":
            return "Running"
        if restart_policy == "OnFailure":
            return "Succeeded" if stopped == succeeded else "Running"
        return "Failed" if failed > 0 else "Succeeded"
    return "Pending"


def _condition(
    previous: dict[str, dict[str, Any]], type_: str, status: str, now: str, reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    prev = previous.get(type_)
    since = (
        prev["lastTransitionTime"]
        if prev and prev.get("status") == status and prev.get("lastTransitionTime")
        else now
    )
    cond: dict[str, Any] = {
        "type": type_,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since,
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def pod_status(
    pod: dict[str, Any],
    containers: list[ContainerView],
    *,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    now: str,
    init: list[ContainerView] | None = None,
) -> dict[str, Any]:
    """The full ``status`` of a pod bound to a devcluster node (``init``: its initContainers)."""
    spec = pod.get("spec", {})
    old = pod.get("status") or {}
    previous = {c["type"]: c for c in old.get("conditions") or []}
    init = init or []
    for c in init:  # an init container that exited 0 counts as ready, as the kubelet reports it
        c.ready = c.state.get("terminated", {}).get("exitCode") == 0
    pending_init = [c.name for c in init if not c.ready]
    phase = pod_phase(spec.get("restartPolicy", "Always"), containers)
    if pending_init:
        init_failed = spec.get("restartPolicy") == "Never" and any(
            c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in init
        )
        phase = "Failed" if init_failed else "Pending"
        for c in containers:
            if "waiting" in c.state and c.state["waiting"].get("reason") == "ContainerCreating":
                c.state = {"waiting": {"reason": "PodInitializing"}}
    unready = [c.name for c in containers if not c.ready]
    terminal = phase in ("Succeeded", "Failed")
    if terminal:
        ready_args: tuple[str, str | None, str | None] = ("False", "PodCompleted", None)
    elif unready:
        ready_args = ("False", "ContainersNotReady", f"containers with unready status: [{' '.join(unready)}]")
    else:
        ready_args = ("True", None, None)
    conditions = [
        _condition(previous, "Initialized", "True", now, "PodCompleted" if terminal else None)
        if not pending_init
        else _condition(
            previous,
            "Initialized",
            "False",
            now,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(pending_init)}]",
        ),
        _condition(previous, "Ready", ready_args[0], now, ready_args[1], ready_args[2]),
        _condition(previous, "ContainersReady", ready_args[0], now, ready_args[1], ready_args[2]),
    ]
    if "PodScheduled" in previous:
        conditions.append(previous["PodScheduled"])
    else:
        conditions.append(_condition(previous, "PodScheduled", "True", now))
    return {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "containerStatuses": [container_status(c) for c in containers],
        **({"initContainerStatuses": [container_status(c) for c in init]} if init else {}),
        "qosClass": old.get("qosClass", "BestEffort"),
    }
