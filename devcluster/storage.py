"""Persistent volumes for devcluster: a default StorageClass, its provisioner, and the PV binder.

The controller manager's persistentvolume-binder is off (DESIGN.md 5), so this loop does its
work for the cases devcluster needs: a claim of the ``devcluster-local`` class (the default)
gets a new PV, a directory under ``<state>/storage/`` shown to the kubelet as a disk of the CSI
driver ``disk.devcluster.local`` (attachable to one node at a time when ReadWriteOnce; fsGroup
applies); a claim pre-bound to a PV (``volumeName`` and the PV's ``claimRef``) is bound; a
provisioned PV whose claim is gone is released and deleted with its directory (reclaim policy
Delete). Not done: matching static PVs to claims that name none, capacity, expansion.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx

from devcluster.apiclient import Api, ApiError
from devcluster.volumes import DISK_DRIVER

log = logging.getLogger("devcluster.storage")

STORAGE_CLASS = "devcluster-local"
PROVISIONER = "devcluster.local/disk"


def storage_class() -> dict[str, Any]:
    """The default StorageClass."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def provisioned_pv(pvc: dict[str, Any]) -> dict[str, Any]:
    """The PV the provisioner makes for ``pvc`` (named like the real ones: pvc-<claim uid>)."""
    meta, spec = pvc["metadata"], pvc.get("spec") or {}
    name = f"pvc-{meta['uid']}"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {
                "storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
            },
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "csi": {"driver": DISK_DRIVER, "volumeHandle": name, "fsType": "ext4"},
        },
    }


class Storage:
    """The provisioner and binder loop."""

    def __init__(self, api: Api, storage_dir: Path, interval_s: float = 0.5) -> None:
        self.api = api
        self.dir = storage_dir
        self.interval_s = interval_s

    def ensure_class(self) -> None:
        try:
            self.api.post("/apis/storage.k8s.io/v1/storageclasses", storage_class())
        except ApiError as e:
            if e.status != 409:
                raise

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.sync_once()
            except (ApiError, httpx.HTTPError, OSError) as e:
                log.warning("storage sync failed: %s", e)
            stop.wait(self.interval_s)

    def sync_once(self) -> None:
        claims = self.api.get("/api/v1/persistentvolumeclaims").get("items", [])
        volumes = {
            v["metadata"]["name"]: v for v in self.api.get("/api/v1/persistentvolumes").get("items", [])
        }
        by_uid = {c["metadata"]["uid"]: c for c in claims}
        for pvc in claims:
            if pvc["metadata"].get("deletionTimestamp") or (pvc.get("status") or {}).get("phase") == "Bound":
                continue
            name = (pvc.get("spec") or {}).get("volumeName")
            if name:
                if name in volumes:
                    self._bind(pvc, volumes[name])
            elif (pvc.get("spec") or {}).get("storageClassName") == STORAGE_CLASS:
                self._provision(pvc, volumes)
        for pv in volumes.values():
            self._reclaim(pv, by_uid)

    def _provision(self, pvc: dict[str, Any], volumes: dict[str, dict[str, Any]]) -> None:
        pv = provisioned_pv(pvc)
        name = pv["metadata"]["name"]
        if name not in volumes:
            path = self.dir / name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)  # a fresh file system's root: root's; fsGroup makes it the pod's
            try:
                volumes[name] = self.api.post("/api/v1/persistentvolumes", pv)
            except ApiError as e:
                if e.status != 409:
                    raise
                volumes[name] = self.api.get(f"/api/v1/persistentvolumes/{name}")
        meta = pvc["metadata"]
        self.api.merge_patch(
            f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/{meta['name']}",
            {
                "metadata": {
                    "annotations": {
                        "pv.kubernetes.io/bind-completed": "yes",
                        "pv.kubernetes.io/bound-by-controller": "yes",
                        "volume.beta.kubernetes.io/storage-provisioner": PROVISIONER,
                    }
                },
                "spec": {"volumeName": name},
            },
        )
        self._bind(pvc, volumes[name])

    def _bind(self, pvc: dict[str, Any], pv: dict[str, Any]) -> None:
        """Both statuses Bound (and the PV's claimRef completed) for a claim that names ``pv``."""
        meta, pv_name = pvc["metadata"], pv["metadata"]["name"]
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if ref and (ref.get("namespace"), ref.get("name")) != (meta["namespace"], meta["name"]):
            return  # the PV is someone else's: the claim stays Pending, as with the real binder
        if ref.get("uid") != meta["uid"]:
            self.api.merge_patch(
                f"/api/v1/persistentvolumes/{pv_name}",
                {"spec": {"claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                       "namespace": meta["namespace"], "name": meta["name"],
                                       "uid": meta["uid"]}}},
            )  # fmt: skip
        self.api.merge_patch(f"/api/v1/persistentvolumes/{pv_name}/status", {"status": {"phase": "Bound"}})
        spec = pv.get("spec") or {}
        self.api.merge_patch(
            f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/{meta['name']}/status",
            {"status": {"phase": "Bound", "accessModes": spec.get("accessModes") or [],
                        "capacity": spec.get("capacity") or {}}},
        )  # fmt: skip

    def _reclaim(self, pv: dict[str, Any], claims: dict[str, dict[str, Any]]) -> None:
        """A Bound PV whose claim is gone: Released; deleted with its directory when it is ours."""
        spec, name = pv.get("spec") or {}, pv["metadata"]["name"]
        ref = spec.get("claimRef") or {}
        phase = (pv.get("status") or {}).get("phase")
        if not ref.get("uid") or ref["uid"] in claims or phase not in ("Bound", "Released"):
            return
        if phase == "Bound":
            self.api.merge_patch(
                f"/api/v1/persistentvolumes/{name}/status", {"status": {"phase": "Released"}}
            )
        ours = (spec.get("csi") or {}).get("driver") == DISK_DRIVER
        if (
            ours
            and spec.get("persistentVolumeReclaimPolicy") == "Delete"
            and not pv["metadata"].get("deletionTimestamp")
        ):
            shutil.rmtree(self.dir / spec["csi"]["volumeHandle"], ignore_errors=True)
            try:
                self.api.delete(f"/api/v1/persistentvolumes/{name}")
            except ApiError as e:
                if e.status != 404:
                    raise
