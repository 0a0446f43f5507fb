"""Registers the fake nodes and keeps them Ready: Lease renewal every 10 s, node status refresh.

A node named in ``paused-nodes.json`` (state folder; :meth:`devcluster.Cluster.pause_heartbeats`) gets
neither: to the node-lifecycle controller it is a lost node (NotReady, then its pods are evicted). Its
pods' processes keep running, as on a node that lost its network.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import httpx

from devcluster.apiclient import Api, ApiError
from devcluster.nodes import NodeSpec, lease_object, node_object, node_status, now_iso, now_micro

log = logging.getLogger("devcluster.nodeagent")

LEASE_RENEW_S = 10.0
PAUSED_NODES = "paused-nodes.json"  # in the state folder: names of nodes without heartbeats
STATUS_REFRESH_S = 60.0


class NodeAgent:
    """The kubelet's node half: registration, heartbeats (Lease + Ready condition)."""

    def __init__(
        self,
        api: Api,
        specs: list[NodeSpec],
        node_ips: dict[str, str],
        lease_renew_s: float = LEASE_RENEW_S,
        paused_file: Path | None = None,
    ) -> None:
        self.api = api
        self.paused_file = paused_file
        self.lease_renew_s = lease_renew_s
        self.specs = specs
        self.node_ips = node_ips
        self.since = now_iso()

    def register(self) -> None:
        """Create (or update) every Node and write its Ready status."""
        for spec in self.specs:
            body = node_object(spec)
            if self.api.get_or_none(f"/api/v1/nodes/{spec.name}") is None:
                self.api.post("/api/v1/nodes", body)
            # Our own taints only: admission adds node.kubernetes.io/not-ready on creation, which the
            # kubelet's first Ready status would clear (through the node-lifecycle controller) anyway.
            self.api.merge_patch(f"/api/v1/nodes/{spec.name}", body)
        self.refresh_status()
        self.renew_leases()

    def paused(self) -> set[str]:
        """Nodes whose heartbeats are paused (names in ``paused_file``)."""
        if self.paused_file is None:
            return set()
        try:
            return set(json.loads(self.paused_file.read_text()))
        except (OSError, ValueError):
            return set()

    def refresh_status(self) -> None:
        stamp = now_iso()
        paused = self.paused()
        for spec in self.specs:
            if spec.name in paused:
                continue
            status = node_status(spec, self.node_ips[spec.name], stamp, self.since)
            self.api.merge_patch(f"/api/v1/nodes/{spec.name}/status", {"status": status})

    def renew_leases(self) -> None:
        paused = self.paused()
        for spec in self.specs:
            if spec.name in paused:
                continue
            path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{spec.name}"
            body = lease_object(spec.name, now_micro())
            try:
                existing = self.api.get_or_none(path)
                if existing is None:
                    self.api.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body)
                else:
                    self.api.merge_patch(path, {"spec": body["spec"]})
            except ApiError as e:
                log.warning("lease %s: %s", spec.name, e)

    def run(self, stop: threading.Event) -> None:
        """Heartbeat until ``stop`` is set."""
        ticks = 0
        per_status = max(1, int(STATUS_REFRESH_S / self.lease_renew_s))
        while not stop.wait(self.lease_renew_s):
            ticks += 1
            try:
                self.renew_leases()
                if ticks % per_status == 0:
                    self.refresh_status()
            except (ApiError, httpx.HTTPError) as e:
                log.warning("heartbeat failed: %s", e)
