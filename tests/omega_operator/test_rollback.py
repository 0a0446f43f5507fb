"""rollback: the spec adapter, the rollback-write test, and the status-first write of a rollback
against a real API server (devcluster), which also proves the CRD keeps every field of
status.attention the decision writes (a structural schema would prune unknown ones)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from omega_operator import builders as b
from omega_operator import crdgen, rollback
from omega_operator.api.validation import parse_spec
from omega_operator.fallback import Action, FallbackSpec, PodView, decide, fallback_spec
from omega_operator.health_report import ProbeOutcome, ProbeResult, parse_report
from omega_operator.kube import Kube, load_credentials

from devcluster import Cluster

NOW = datetime(2026, 11, 24, 21, 0, tzinfo=UTC)
RAW_SPEC: dict[str, Any] = {
    "model": {"name": "tiny", "uri": "file:///models/tiny"},
    "image": {"repository": "reg.example/omega-vlm-server", "tag": "v1"},
}
FLASH = "reg.example/omega-vlm-server:v1-flash"
SDPA = "reg.example/omega-vlm-server:v1-sdpa"
BAD = ProbeResult(
    "p",
    ProbeOutcome.REPORT,
    200,
    report=parse_report(
        {
            "status": "ready",
            "ready": True,
            "attn": "sdpa",
            "attn_requested": "flash_attention_2",
            "flash_attn": {"available": False, "loaded": False, "error": "ImportError: no flash_attn"},
        }
    ),
)


def flash_pod(name: str = "p") -> PodView:
    return PodView(name=name, node="h100-sxm-0", phase="Running", image=FLASH, attn_impl="flash_attention_2")


def rollback_decision() -> Any:
    d = decide(fallback_spec(parse_spec(RAW_SPEC)), None, [flash_pod()], {"p": BAD}, now=NOW)
    assert d.action is Action.ROLLBACK
    return d


def test_fallback_spec_uses_the_builders_defaults_and_images() -> None:
    fs = fallback_spec(parse_spec(RAW_SPEC))
    assert fs == FallbackSpec(
        attention="auto", flash_image=FLASH, sdpa_image=SDPA, enabled=True, crash_loop_restarts=3
    )
    raw = {
        **RAW_SPEC,
        "attention": "flash_attention_2",
        "fallback": {"enabled": False, "crashLoopRestarts": 5},
        "image": {"repository": "r/omega-vlm-server", "flashImage": "r/x:f", "sdpaImage": "r/x:s"},
    }
    fs = fallback_spec(parse_spec(raw))
    assert (fs.attention, fs.flash_image, fs.sdpa_image, fs.enabled, fs.crash_loop_restarts) == (
        "flash_attention_2",
        "r/x:f",
        "r/x:s",
        False,
        5,
    )


def test_the_rollback_decision_builds_the_sdpa_deployment_through_the_builders() -> None:
    spec = parse_spec(RAW_SPEC)
    d = rollback_decision()
    variant = d.variant
    dep = b.deployment(spec, b.Owner("x", "ml", "uid-1"), variant)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (variant, c["image"], env["ATTN_IMPL"]) == ("sdpa", SDPA, "sdpa")


def test_is_rollback_write() -> None:
    spec = parse_spec(RAW_SPEC)
    owner = b.Owner("x", "ml", "uid-1")
    flash_dep, sdpa_dep = b.deployment(spec, owner, "flash"), b.deployment(spec, owner, "sdpa")
    d = rollback_decision()
    assert rollback.is_rollback_write(d, flash_dep, applied=True)
    assert not rollback.is_rollback_write(d, flash_dep, applied=False)
    assert not rollback.is_rollback_write(
        d, sdpa_dep, applied=True
    )  # already on sdpa: a repair, not a rollback
    assert not rollback.is_rollback_write(d, None, applied=True)  # created on sdpa from the start
    keep = decide(fallback_spec(spec), None, [flash_pod()], {}, now=NOW)
    assert not rollback.is_rollback_write(keep, flash_dep, applied=True)
    # After a crash between record and write, the next process decides KEEP but still does the write.
    after = decide(
        fallback_spec(spec), {"fallback": d.fallback.to_status()}, [flash_pod()], {"p": BAD}, now=NOW
    )
    assert after.action is Action.KEEP and rollback.is_rollback_write(after, flash_dep, applied=True)


@pytest.mark.devcluster
def test_persist_fallback_writes_the_record_first_and_the_crd_keeps_it(devcluster: Cluster) -> None:
    devcluster.kubectl("apply", "--validate=false", "-f", "-", input=crdgen.render())
    devcluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/omegavlms.vlm.omega.io")
    ns = "rollback-test"
    devcluster.kubectl("create", "namespace", ns)
    obj = {
        "apiVersion": "vlm.omega.io/v1alpha1",
        "kind": "OmegaVLM",
        "metadata": {"name": "x", "namespace": ns},
    }
    devcluster.apply({**obj, "spec": RAW_SPEC})

    d = rollback_decision()

    async def main() -> tuple[Any, Any]:
        kube = Kube(load_credentials(str(devcluster.kubeconfig)))
        try:
            keep = decide(fallback_spec(parse_spec(RAW_SPEC)), None, [], {}, now=NOW)
            nothing = await rollback.persist_fallback(kube, ns, "x", keep)
            written = await rollback.persist_fallback(kube, ns, "x", d)
            return nothing, written
        finally:
            await kube.close()

    nothing, written = asyncio.run(main())
    assert nothing is None
    assert written == {"fallback": d.fallback.to_status()}
    got = json.loads(devcluster.kubectl("get", "ovlm", "x", "-n", ns, "-o", "json").stdout)
    assert got["status"]["attention"]["fallback"] == d.fallback.to_status()
    # Every key the decision owns survives the CRD's structural pruning.
    attention = {"requested": "auto", **{k: v for k, v in d.status_attention().items() if v is not None}}
    attention["retryFlash"] = "r1"
    api = client.CustomObjectsApi(devcluster.api_client())
    api.patch_namespaced_custom_object_status(
        "vlm.omega.io", "v1alpha1", ns, "omegavlms", "x", {"status": {"attention": attention}}
    )
    back: Any = api.get_namespaced_custom_object("vlm.omega.io", "v1alpha1", ns, "omegavlms", "x")
    assert back["status"]["attention"] == attention
    devcluster.kubectl("delete", "namespace", ns, "--wait=false")
