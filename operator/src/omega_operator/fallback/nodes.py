"""Per-node memory of flash failures: which nodes flash-attn failed on, and whether the fleet must move. Pure.

Mixed driver versions across node pools (a GPU driver upgrade half done) break flash-attn on some
nodes only: one pod on one bad node must not move the whole fleet to sdpa. So a flash failure of a
node-scoped kind (the server's ``flash_attn.error_kind`` ``import_error``, ``unsupported_device`` or
``kernel_error``: an ABI or driver mismatch, a device the build does not support) records its node
in ``status.attention.badNodes``, and the flash pods are kept off the listed
nodes (required node affinity ``kubernetes.io/hostname NotIn``, :func:`omega_operator.placement.affinity`).

A failure of another kind rolls the fleet back at once, as before: ``not_installed`` (an image
without flash-attn fails on every node) and a failure the server did not classify (an older server,
a crash line naming flash-attn without a kind).

The fleet rolls back to sdpa (:func:`fleet_must_fall_back`) when no healthy flash node is left, that is
when no pod of the current flash image is Ready on flash on an unlisted node, and either

* failures were seen on at least two nodes (it is not one node's trouble), or
* a flash pod kept off the listed nodes cannot be scheduled (the scheduler says no other node can
  take it, for want of a node or of a free GPU).

With one listed node and no pod Ready on flash yet (``replicas: 1``), the node is excluded and the
replacement tries another node. The list belongs to one flash image: entries of another image are
dropped (a new image is tried everywhere), and the retry annotation clears it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from omega_operator.conditions import rfc3339
from omega_operator.fallback.findings import PodFinding
from omega_operator.fallback.inputs import FallbackSpec, PodView
from omega_operator.health_report import FLASH_BACKEND, ProbeResult

#: flash failure kinds that may be one node's (its driver, its device), not the image's
NODE_SCOPED_KINDS = frozenset({"import_error", "unsupported_device", "kernel_error"})
EXCLUDED_EVENT_REASON = "FlashAttentionNodeExcluded"
MAX_BAD_NODES = 64  # status stays small; beyond that many failing nodes the fleet has fallen back anyway


@dataclass(frozen=True)
class BadNode:
    """One node flash-attn failed on (``status.attention.badNodes[]``)."""

    node: str
    image: str  # the flash image that failed there
    reason: str
    message: str
    pod: str
    at: str

    def to_status(self) -> dict[str, Any]:
        """camelCase dict for the status."""
        return {
            "node": self.node,
            "image": self.image,
            "reason": self.reason,
            "message": self.message,
            "pod": self.pod,
            "at": self.at,
        }

    @classmethod
    def from_status(cls, data: Mapping[str, Any]) -> BadNode | None:
        """Read one entry back (None when it names no node)."""
        if not isinstance(data, Mapping) or not data.get("node"):
            return None
        return cls(
            node=str(data["node"]),
            image=str(data.get("image") or ""),
            reason=str(data.get("reason") or ""),
            message=str(data.get("message") or ""),
            pod=str(data.get("pod") or ""),
            at=str(data.get("at") or ""),
        )


def is_node_scoped(finding: PodFinding) -> bool:
    """A flash failure that may be its node's (a node-scoped kind the server named) on a known node."""
    return finding.is_flash and finding.node is not None and finding.kind in NODE_SCOPED_KINDS


def recorded(status_attention: Mapping[str, Any] | None, spec: FallbackSpec) -> tuple[BadNode, ...]:
    """The listed nodes that still apply: those of the current flash image."""
    entries = (status_attention or {}).get("badNodes") or []
    nodes = (BadNode.from_status(e) for e in entries if isinstance(e, Mapping))
    return tuple(n for n in nodes if n is not None and n.image == spec.flash_image)


def merge(
    listed: Sequence[BadNode], findings: Iterable[PodFinding], spec: FallbackSpec, now: datetime
) -> tuple[tuple[BadNode, ...], tuple[BadNode, ...]]:
    """(all listed nodes, the ones newly listed) after these findings' node-scoped flash failures."""
    known = {n.node for n in listed}
    new: list[BadNode] = []
    for f in findings:
        if is_node_scoped(f) and f.node not in known:
            assert f.node is not None
            known.add(f.node)
            new.append(BadNode(f.node, spec.flash_image, str(f.reason), f.message, f.pod, rfc3339(now)))
    return (*listed, *new)[:MAX_BAD_NODES], tuple(new)


def healthy_flash_nodes(
    pods: Iterable[PodView], probes: Mapping[str, ProbeResult], spec: FallbackSpec, bad: Iterable[str]
) -> frozenset[str]:
    """Unlisted nodes where a pod of the current flash image is Ready on flash (its /health says so)."""
    listed = set(bad)
    out: set[str] = set()
    for p in pods:
        if p.deleting or p.node is None or p.node in listed or not p.is_flash_variant(spec):
            continue
        r = probes.get(p.name)
        if r is not None and r.report is not None and r.report.ready and r.report.attn == FLASH_BACKEND:
            out.add(p.node)
    return frozenset(out)


def fleet_must_fall_back(
    bad: Sequence[BadNode], healthy: frozenset[str], pods: Iterable[PodView], spec: FallbackSpec
) -> str | None:
    """Why the whole OmegaVLM must go to sdpa despite the per-node memory, or None (see the module doc)."""
    if healthy or not bad:
        return None
    if len(bad) >= 2:
        return (
            f"flash-attn failed on {len(bad)} nodes ({', '.join(n.node for n in bad)}) and no pod runs flash"
        )
    for p in pods:
        if not p.deleting and p.unschedulable and p.is_flash_variant(spec):
            return (
                f"flash-attn failed on node {bad[0].node} and no other node can take a flash pod "
                f"({p.name}: {p.unschedulable})"
            )
    return None
