"""The pods the operator makes, and the chart's operator pod, meet the Pod Security "restricted" profile,
checked rule by rule (``pod_security``); the server pods mount no service-account token."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from omega_operator import builders as b
from omega_operator.api import parse_spec

from tests.chart.helm import one, render
from tests.security.pod_security import restricted_violations

OWNER = b.Owner(name="captioner", namespace="ml", uid="1234-uid")
BASE = {
    "model": {"name": "tiny", "uri": "file:///models/tiny"},
    "image": {"repository": "reg.example/omega-vlm-server", "tag": "v1"},
}
SPECS = {
    "file": {},
    "pvc": {"model": {"name": "tiny", "uri": "pvc://models/tiny"}},
    "hf": {"model": {"name": "tiny", "uri": "hf://org/tiny"}},
    "two-gpus": {"gpu": {"count": 2}, "replicas": 2},
}


def server_pod(change: dict[str, Any], variant: str) -> dict[str, Any]:
    spec = parse_spec({**copy.deepcopy(BASE), **change})
    pod: dict[str, Any] = b.deployment(spec, OWNER, variant)["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("variant", ["flash", "sdpa"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_server_pods_meet_the_restricted_profile(name: str, variant: str) -> None:
    assert restricted_violations(server_pod(SPECS[name], variant)) == []


@pytest.mark.parametrize("name", sorted(SPECS))
def test_server_pods_mount_no_service_account_token(name: str) -> None:
    pod = server_pod(SPECS[name], "sdpa")
    assert pod.get("automountServiceAccountToken") is False
    assert not any(
        "serviceaccount" in m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
    )


def test_the_chart_operator_pod_meets_the_restricted_profile() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []


def good_pod() -> dict[str, Any]:
    return server_pod({}, "sdpa")


@pytest.mark.parametrize(
    ("breach", "named"),
    [
        (lambda p: p.update(hostNetwork=True), "spec.hostNetwork"),
        (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (
            lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
            "allowPrivilegeEscalation",
        ),
        (
            lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
            "capabilities.drop",
        ),
        (
            lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            "capabilities.add",
        ),
        (
            lambda p: [
                p["securityContext"].pop("runAsNonRoot"),
                p["containers"][0]["securityContext"].pop("runAsNonRoot"),
            ],
            "runAsNonRoot",
        ),
        (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser"),
        (lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile"),
        (
            lambda p: [
                p["securityContext"].pop("seccompProfile"),
                p["containers"][0]["securityContext"].pop("seccompProfile"),
            ],
            "seccompProfile",
        ),
        (lambda p: p["containers"][0]["ports"][0].update(hostPort=8000), "hostPort"),
        (lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "sysctls"),
    ],
)
def test_the_checker_names_each_breach(breach: Any, named: str) -> None:
    pod = good_pod()
    breach(pod)
    assert any(named in v for v in restricted_violations(pod)), restricted_violations(pod)
