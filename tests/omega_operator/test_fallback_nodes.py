"""Issue 12, per-node memory: flash-attn broken on some nodes only moves their pods, not the fleet.

Table tests of :mod:`omega_operator.fallback.nodes` through the decision, with /health bodies built by
the server's own code, and of what the decision makes of the Deployment (NotIn affinity, strategy).
"""

from __future__ import annotations

from typing import Any

from omega_operator import builders as b
from omega_operator import rollback, rollout
from omega_operator import status as st
from omega_operator.fallback import Action, Decision, PodView, Reason, decide
from omega_operator.fallback.nodes import NODE_SCOPED_KINDS

from tests.omega_operator.test_fallback import FLASH, MINIMAL_SPEC, NOW, pod, spec
from tests.omega_operator.test_fallback_evidence import ON_FLASH, ready_after

IMPORT_ERROR = "ImportError: flash_attn_2_cuda.so: undefined symbol: cuLaunchKernelEx"
BROKEN = ready_after(IMPORT_ERROR, "import_error")  # Ready on sdpa in process, flash failed
SXM, PCIE, H200 = "h100-sxm-0", "h100-pcie-0", "h200-0"


def decide_on(
    pods: list[dict[str, Any]], probes: dict[str, Any], status: dict[str, Any] | None = None, **kw: Any
) -> Decision:
    views = [PodView.from_pod(p) for p in pods]
    return decide(kw.pop("fspec", spec()), status, views, probes, now=NOW, **kw)


def test_one_bad_node_while_another_serves_flash_keeps_the_fleet_on_flash() -> None:
    d = decide_on([pod("a", node=SXM), pod("b", node=PCIE)], {"a": ON_FLASH, "b": BROKEN})
    assert d.action is Action.EXCLUDE and d.variant == "flash" and d.fallback is None
    assert [(n.node, n.pod, n.image) for n in d.bad_nodes] == [(PCIE, "b", FLASH)]
    assert d.new_bad_nodes == d.bad_nodes and IMPORT_ERROR in d.bad_nodes[0].message
    assert d.excluded_nodes == (PCIE,)
    assert d.condition_status and d.reason == Reason.NODE_FAILED
    assert PCIE in d.message and SXM in d.message
    assert d.status_attention()["badNodes"][0]["node"] == PCIE
    # The Deployment keeps its pods off the node: required affinity NotIn, ANDed with the GPU term.
    dep = b.deployment(MINIMAL_SPEC, b.Owner("m", "ns", "uid"), d.variant, d.excluded_nodes)
    terms = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    for term in terms:
        assert {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [PCIE]} in term[
            "matchExpressions"
        ]
        assert any(e["key"] != "kubernetes.io/hostname" for e in term["matchExpressions"])
    # Once listed, the same evidence is not a new node (no second Event), and the list stays.
    again = decide_on(
        [pod("a", node=SXM), pod("b", node=PCIE)],
        {"a": ON_FLASH, "b": BROKEN},
        status={"attention": d.status_attention()}["attention"],
    )
    assert again.action is Action.KEEP and again.new_bad_nodes == () and again.excluded_nodes == (PCIE,)


def test_failures_on_two_nodes_with_nothing_on_flash_roll_the_fleet_back() -> None:
    d = decide_on([pod("a", node=SXM), pod("b", node=PCIE)], {"a": BROKEN, "b": BROKEN})
    assert d.action is Action.ROLLBACK and d.variant == "sdpa" and d.fallback is not None
    assert {n.node for n in d.bad_nodes} == {SXM, PCIE}
    assert "2 nodes" in d.fallback.message and d.excluded_nodes == ()


def test_one_bad_node_and_nothing_on_flash_yet_tries_another_node() -> None:
    """replicas: 1 on a bad node: list it; the replacement tries another node before any rollback."""
    first = decide_on([pod("a", node=SXM)], {"a": BROKEN})
    assert first.action is Action.EXCLUDE and first.excluded_nodes == (SXM,)
    # The replacement lands on another node and fails there too: two nodes, no flash -> fleet rollback.
    second = decide_on([pod("a2", node=PCIE)], {"a2": BROKEN}, status=first.status_attention())
    assert second.action is Action.ROLLBACK and {n.node for n in second.bad_nodes} == {SXM, PCIE}
    # ... or it runs flash there: the fleet stays on flash, the first node stays listed.
    good = decide_on([pod("a2", node=PCIE)], {"a2": ON_FLASH}, status=first.status_attention())
    assert good.action is Action.KEEP and good.excluded_nodes == (SXM,) and good.condition_status


def test_no_node_outside_the_list_can_take_a_flash_pod_rolls_the_fleet_back() -> None:
    first = decide_on([pod("a", node=SXM)], {"a": BROKEN})
    stuck = pod(
        "a2",
        node=None,
        ready=False,
        phase="Pending",
        unschedulable="0/5 nodes are available: 1 node(s) didn't match node affinity",
    )
    d = decide_on([stuck], {}, status=first.status_attention())
    assert d.action is Action.ROLLBACK and d.fallback is not None
    assert "no other node can take a flash pod" in d.fallback.message and d.fallback.node == SXM


def test_a_flash_build_missing_from_the_image_rolls_back_at_once() -> None:
    d = decide_on(
        [pod("a", node=SXM), pod("b", node=PCIE)],
        {"a": ON_FLASH, "b": ready_after("ImportError: No module named 'flash_attn'", "not_installed")},
    )
    assert "not_installed" not in NODE_SCOPED_KINDS
    assert d.action is Action.ROLLBACK and d.bad_nodes == ()


def test_a_new_flash_image_or_the_retry_annotation_clears_the_list() -> None:
    listed = decide_on(
        [pod("a", node=SXM), pod("b", node=PCIE)], {"a": ON_FLASH, "b": BROKEN}
    ).status_attention()
    new_image = spec(flash_image="reg.example/omega-vlm-server:v2-flash")
    d = decide_on(
        [pod("c", node=SXM, image=new_image.flash_image)], {"c": ON_FLASH}, status=listed, fspec=new_image
    )
    assert d.bad_nodes == () and d.excluded_nodes == () and d.status_attention()["badNodes"] is None
    retried = decide_on(
        [pod("a", node=SXM)], {"a": ON_FLASH}, status=listed, annotations={"vlm.omega.io/retry-flash": "1"}
    )
    assert retried.bad_nodes == () and not retried.condition_status


def test_pods_leave_the_bad_node_surge_first_and_the_list_is_written_before_the_deployment() -> None:
    pods = [pod("a", node=SXM), pod("b", node=PCIE)]
    d = decide_on(pods, {"a": ON_FLASH, "b": BROKEN})
    views = [PodView.from_pod(p) for p in pods]
    # b serves sdpa in process (Ready): a new pod first, b goes once it is Ready (no Ready pod lost).
    assert rollout.strategy(d, views)["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    gone = [v for v in views if v.node != PCIE]
    assert rollout.strategy(d, gone) == rollout.NORMAL

    class Recorder:
        patches: list[dict[str, Any]] = []

        async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
            self.patches.append(patch)
            return patch

    import asyncio

    kube = Recorder()
    written = asyncio.run(rollback.persist_fallback(kube, "ns", "m", d))
    assert written is not None and kube.patches == [
        {"attention": {"badNodes": [n.to_status() for n in d.bad_nodes]}}
    ]
    # The status shows the list and says so in FlashAttentionDegraded; Ready is not touched by it.
    v = st.verdict(MINIMAL_SPEC, d)
    assert v.attention["badNodes"][0]["node"] == PCIE
    assert v.flash.degraded and v.flash.reason == Reason.NODE_FAILED and not v.flash.rolled_back
