"""The process kubelet: lists the pods bound to devcluster nodes and keeps one worker per pod.

Each worker (``devcluster.podworker``) runs its pod's containers as local processes, each entered
into its own mount namespace, root and user by the launcher. The kubelet also holds what pods
share: pod addresses (``Ipam``), volume attachments, the image map, and Events.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devcluster import images
from devcluster.apiclient import Api, ApiError
from devcluster.nodes import now_iso
from devcluster.podworker import PodWorker
from devcluster.procs import PidRegistry
from devcluster.volumes import Attachments, Lookups

log = logging.getLogger("devcluster.kubelet")


@dataclass
class KubeletConfig:
    """Knobs of the process kubelet."""

    backoff_base_s: float = 10.0  # the kubelet's crash-loop back-off: 0, base, 2*base, ... up to max
    backoff_max_s: float = 300.0
    tick_s: float = 0.25
    list_interval_s: float = 0.5
    lease_renew_s: float = 10.0  # node heartbeat (the node-lifecycle controller's grace period is 40 s)

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class Ipam:
    """Pod addresses 127.<a>.<b>.<c> of this cluster: never two live pods on one address."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # "127.<a>"
        self._used: dict[str, str] = {}
        self._cursor = 0
        self._lock = threading.Lock()

    def allocate(self, key: str) -> str:
        with self._lock:
            for ip, owner in self._used.items():
                if owner == key:
                    return ip
            for _ in range(250 * 254):
                self._cursor = self._cursor % (250 * 254) + 1
                b, c = divmod(self._cursor - 1, 254)
                ip = f"{self.prefix}.{b + 1}.{c + 1}"
                if ip not in self._used:
                    self._used[ip] = key
                    return ip
        raise RuntimeError("pod address range exhausted")

    def release(self, key: str) -> None:
        with self._lock:
            for ip in [ip for ip, owner in self._used.items() if owner == key]:
                del self._used[ip]


class Kubelet:
    """Lists pods bound to its nodes and keeps one :class:`PodWorker` per pod."""

    def __init__(
        self,
        api: Api,
        node_ips: dict[str, str],
        state_dir: Path,
        images_file: Path,
        ipam: Ipam,
        registry: PidRegistry,
        config: KubeletConfig,
        server: str,
        ca_file: Path,
    ) -> None:
        self.api = api
        self.state_dir = state_dir
        self.server = server
        self.ca_file = ca_file
        self.node_ips = node_ips
        self.layout_pods = state_dir / "pods"  # logs, as <ns>/<pod>/<container>.log
        self.layout_kubelet = state_dir / "kubelet" / "pods"  # per pod uid: volumes, container roots
        self.storage_dir = state_dir / "storage"  # PV directories of the devcluster disk driver
        self.attachments = Attachments()
        self.images_file = images_file
        self.ipam = ipam
        self.registry = registry
        self.config = config
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._images_mtime: float | None = None
        self._images: list[images.ImageEntry] = images.default_entries()

    def image_entries(self) -> list[images.ImageEntry]:
        """The image map, re-read when its file changed (tests add entries while the cluster runs)."""
        try:
            mtime = self.images_file.stat().st_mtime_ns
        except FileNotFoundError:
            return self._images
        if mtime != self._images_mtime:
            with contextlib.suppress(ValueError, OSError):
                self._images = images.load(self.images_file)
                self._images_mtime = mtime
        return self._images

    def lookups(self, pod: dict[str, Any]) -> Lookups:
        """What volume setup of ``pod`` reads from the API."""
        api = self.api
        return Lookups(
            configmap=lambda ns, name: api.get_or_none(f"/api/v1/namespaces/{ns}/configmaps/{name}"),
            secret=lambda ns, name: api.get_or_none(f"/api/v1/namespaces/{ns}/secrets/{name}"),
            pvc=lambda ns, name: api.get_or_none(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"),
            pv=lambda name: api.get_or_none(f"/api/v1/persistentvolumes/{name}"),
            token=lambda sa, ttl, audiences: self.token(pod, sa, ttl, audiences),
        )

    def token(self, pod: dict[str, Any], sa: str, ttl: int, audiences: list[str]) -> str:
        """A pod-bound token of ServiceAccount ``sa`` (TokenRequest API)."""
        meta = pod["metadata"]
        spec: dict[str, Any] = {"audiences": audiences, "expirationSeconds": ttl}
        # Bound to the pod when the pod names its ServiceAccount (the ServiceAccount admission
        # plugin, off here, would always have set it; the API refuses to bind a pod without it).
        if pod["spec"].get("serviceAccountName"):
            spec["boundObjectRef"] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": meta["name"],
                "uid": meta["uid"],
            }
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        try:
            answer = self.api.post(
                f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", request
            )
        except ApiError as e:
            if e.status == 404:  # the ServiceAccount controller makes "default" a moment after its namespace
                raise LookupError(f'failed to fetch token: serviceaccounts "{sa}" not found') from e
            raise
        return str(answer["status"]["token"])

    def configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        obj = self.api.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return None if obj is None else dict(obj.get("data") or {})

    def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        obj = self.api.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return None if obj is None else dict(obj.get("data") or {})

    def event(
        self, pod: dict[str, Any], reason: str, message: str, type_: str, container: str | None,
        component: str = "kubelet",
    ) -> None:  # fmt: skip
        """Post a core/v1 Event about ``pod`` from ``component``."""
        meta = pod["metadata"]
        stamp = now_iso()
        ref: dict[str, Any] = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                               "uid": meta["uid"], "apiVersion": "v1"}  # fmt: skip
        if container:
            ref["fieldPath"] = f"spec.containers{{{container}}}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{random.getrandbits(64):016x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": component, "host": pod["spec"].get("nodeName", "")},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.api.post(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except (ApiError, httpx.HTTPError) as e:
            log.debug("event %s on %s: %s", reason, meta["name"], e)

    def worker_done(self, worker: PodWorker) -> None:
        with self._lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    def sync_once(self) -> None:
        """One pass: start workers for new pods on our nodes, feed updates, notice removed pods."""
        pods = self.api.get("/api/v1/pods").get("items", [])
        seen: set[str] = set()
        for pod in pods:
            if pod.get("spec", {}).get("nodeName") not in self.node_ips:
                continue
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            with self._lock:
                worker = self.workers.get(uid)
                if worker is None:
                    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and not pod[
                        "metadata"
                    ].get("deletionTimestamp"):
                        continue  # finished before this kubelet started: nothing to run
                    worker = PodWorker(self, pod)
                    self.workers[uid] = worker
                    worker.start()
                else:
                    worker.update(pod)
        with self._lock:
            for uid, worker in list(self.workers.items()):
                if uid not in seen:
                    worker.gone()

    def run(self, stop: threading.Event) -> None:
        """List pods until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.sync_once()
            except (ApiError, httpx.HTTPError) as e:
                log.warning("pod list failed: %s", e)
            stop.wait(self.config.list_interval_s)

    def shutdown(self) -> None:
        """Stop every pod's processes (the node goes away)."""
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.shutdown()
        for w in workers:
            w.join(timeout=15)
