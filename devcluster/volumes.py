"""A pod's volumes on the host, set up and torn down the way a kubelet's volume manager does.

Each volume is a host directory (or file) under the pod's kubelet folder or elsewhere on the
host; the launcher bind-mounts it at the containers' mountPaths. ``emptyDir`` is a fresh 0777
directory (``medium: Memory``: a tmpfs of ``sizeLimit``, mounted in the supervisor's private
mount namespace), ``configMap``/``secret``/``projected`` are files written like the kubelet's
atomic writer (``..data``) and always mounted read-only, ``hostPath`` checks its ``type``, and
``persistentVolumeClaim`` needs a Bound claim: a volume of the devcluster disk driver is attached
to one node at a time when its PV has ReadWriteOnce (a pod on another node gets the
attach/detach controller's Multi-Attach error). ``fsGroup`` gives emptyDir, disk PVs and the
API-data volumes to that group (g+rw or g+r, setgid directories), as SetVolumeOwnership does.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster import launch
from devcluster.podenv import field_value
from devcluster.security import fs_group

DISK_DRIVER = "disk.devcluster.local"  # the CSI driver name on PVs the devcluster provisioner makes
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_VOLUME = "kube-api-access-devcluster"
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
          "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 10**-3}  # fmt: skip
_QUANTITY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?")


class MountError(Exception):
    """A volume cannot be set up yet: the pod stays ContainerCreating with an Event (reason, message)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class HostVolume:
    """Where a volume lies on the host, and whether it must be mounted read-only."""

    path: str
    read_only: bool = False
    creates_sub_paths: bool = False  # subPath directories are created in it (emptyDir, PVC)


def quantity_bytes(value: str | int | float) -> int:
    """A resource quantity ("64Mi", "1G", "1e3", 512) in bytes."""
    m = _QUANTITY.fullmatch(str(value).strip())
    if m is None:
        raise ValueError(f"not a quantity: {value!r}")
    return int(float(m.group(1)) * _UNITS.get(m.group(2) or "", 1))


def payload(
    data: dict[str, bytes], items: list[dict[str, Any]] | None, default_mode: int, what: str, optional: bool
) -> dict[str, tuple[bytes, int]]:
    """Files of a configMap/secret volume (relative path -> content, mode): every key, or ``items``."""
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise MountError("FailedMount", f"{what} references non-existent key: {item['key']}")
        out[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
    return out


def write_atomic(target: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """The kubelet's atomic writer: files in a ``..<time>`` dir, ``..data`` -> it, top entries -> ``..data/``."""
    target.mkdir(parents=True, exist_ok=True)
    stamp = target / f"{time.strftime('..%Y_%m_%d_%H_%M_%S', time.gmtime())}.{time.monotonic_ns() % 10**9}"
    stamp.mkdir(mode=0o755)
    stamp.chmod(0o755)
    for rel, (content, mode) in files.items():
        path = stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    tmp = target / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp.name)
    tmp.replace(target / "..data")
    for top in {rel.split("/")[0] for rel in files}:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for old in target.glob("..*_*"):
        if old.is_dir() and not old.is_symlink() and old.name != stamp.name:
            shutil.rmtree(old, ignore_errors=True)


def set_ownership(path: Path, gid: int, read_only: bool) -> None:
    """SetVolumeOwnership: group ``gid``, files g+rw (g+r when read-only), directories also g+x and setgid."""
    mask = 0o440 if read_only else 0o660
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files, None]:
            p = Path(root) if name is None else Path(root) / name
            if p.is_symlink():
                os.lchown(p, -1, gid)
                continue
            st = p.stat()
            os.chown(p, -1, gid)
            extra = mask | (0o2110 if p.is_dir() else 0)
            p.chmod((st.st_mode & 0o7777) | extra)


class Attachments:
    """Which node each attachable volume is attached to: ReadWriteOnce volumes to one node at a time."""

    def __init__(self) -> None:
        self._holders: dict[
            str, dict[str, tuple[str, str, str]]
        ] = {}  # volume -> pod key -> (node, ns, name)
        self._lock = threading.Lock()

    def attach(self, volume: str, node: str, pod_key: str, namespace: str, name: str) -> str | None:
        """Attach for ``pod_key``; the Multi-Attach error message when another node holds it."""
        with self._lock:
            holders = self._holders.setdefault(volume, {})
            others = [h for k, h in holders.items() if k != pod_key and h[0] != node]
            if others:
                if all(h[1] == namespace for h in others):
                    used = ", ".join(sorted(h[2] for h in others))
                    return f'Multi-Attach error for volume "{volume}" Volume is already used by pod(s) {used}'
                return (
                    f'Multi-Attach error for volume "{volume}" Volume is already exclusively attached to '
                    "one node and can't be attached to another"
                )
            holders[pod_key] = (node, namespace, name)
            return None

    def detach(self, pod_key: str) -> None:
        with self._lock:
            for holders in self._holders.values():
                holders.pop(pod_key, None)


@dataclass
class Lookups:
    """What volume setup reads from the API (each returns None when the object does not exist)."""

    configmap: Callable[[str, str], dict[str, Any] | None]
    secret: Callable[[str, str], dict[str, Any] | None]
    pvc: Callable[[str, str], dict[str, Any] | None]
    pv: Callable[[str], dict[str, Any] | None]
    token: Callable[[str, int, list[str]], str]  # (service account, expirationSeconds, audiences) -> token


def _data(obj: dict[str, Any], secret: bool) -> dict[str, bytes]:
    if secret:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    out |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
    return out


class PodVolumes:
    """The volumes of one pod under ``base`` (its kubelet folder); ``setup`` may be retried."""

    def __init__(
        self, base: Path, pod: dict[str, Any], lookups: Lookups, attachments: Attachments, storage: Path,
        pod_ip: str, host_ip: str,
    ) -> None:  # fmt: skip
        self.base, self.pod, self.lookups, self.attachments = base, pod, lookups, attachments
        self.storage, self.pod_ip, self.host_ip = storage, pod_ip, host_ip
        self.ready: dict[str, HostVolume] = {}
        self._tmpfs: list[str] = []
        self._token_refresh: dict[str, float] = {}  # volume -> monotonic time to renew its token
        meta = pod["metadata"]
        self.key = f"{meta['namespace']}/{meta['name']}/{meta['uid']}"
        self.fs_group = fs_group(pod)

    def setup(self, volumes: list[dict[str, Any]]) -> None:
        """Set up every volume not yet ready; raises MountError for the first that cannot be."""
        for vol in volumes:
            if vol["name"] not in self.ready:
                self.ready[vol["name"]] = self._one(vol)

    def refresh_tokens(self, volumes: list[dict[str, Any]]) -> None:
        """Rewrite projected tokens at 80 % of their lifetime, as the kubelet does."""
        now = time.monotonic()
        for vol in volumes:
            due = self._token_refresh.get(vol["name"])
            if due is not None and now >= due:
                self._one(vol)

    def teardown(self) -> None:
        """Unmount tmpfs volumes, detach, remove the pod's folder."""
        for path in self._tmpfs:
            with contextlib.suppress(OSError):
                launch.umount(path)
        self._tmpfs.clear()
        self.attachments.detach(self.key)
        shutil.rmtree(self.base, ignore_errors=True)

    def _dir(self, plugin: str, name: str) -> Path:
        return self.base / "volumes" / f"kubernetes.io~{plugin}" / name

    def _one(self, vol: dict[str, Any]) -> HostVolume:
        name = vol["name"]
        ns = self.pod["metadata"]["namespace"]
        if "emptyDir" in vol:
            return self._empty_dir(name, vol["emptyDir"] or {})
        if "configMap" in vol or "secret" in vol:
            secret = "secret" in vol
            src = vol["secret" if secret else "configMap"]
            ref = src.get("secretName" if secret else "name", "")
            kind = "secret" if secret else "configmap"
            obj = (self.lookups.secret if secret else self.lookups.configmap)(ns, ref)
            if obj is None and not src.get("optional"):
                raise MountError(
                    "FailedMount", f'MountVolume.SetUp failed for volume "{name}" : {kind} "{ref}" not found'
                )
            mode = int(src.get("defaultMode", 0o644))
            files = payload(
                _data(obj or {}, secret),
                src.get("items"),
                mode,
                f"{kind} {ns}/{ref}",
                bool(src.get("optional")),
            )
            return self._api_data("secret" if secret else "configmap", name, files)
        if "projected" in vol:
            return self._projected(name, vol["projected"])
        if "hostPath" in vol:
            return self._host_path(name, vol["hostPath"])
        if "persistentVolumeClaim" in vol:
            return self._claim(name, vol["persistentVolumeClaim"])
        kinds = [k for k in vol if k != "name"]
        raise MountError(
            "FailedMount", f'volume "{name}": {", ".join(kinds)} volumes are not supported by devcluster'
        )

    def _empty_dir(self, name: str, spec: dict[str, Any]) -> HostVolume:
        path = self._dir("empty-dir", name)
        if not path.exists():
            path.mkdir(parents=True)
            if spec.get("medium") == "Memory":
                size = f",size={quantity_bytes(spec['sizeLimit'])}" if spec.get("sizeLimit") else ""
                launch.mount(
                    "tmpfs", str(path), "tmpfs", launch.MS_NOSUID | launch.MS_NODEV, f"mode=0777{size}"
                )
                self._tmpfs.append(str(path))
            path.chmod(0o777)
            if self.fs_group is not None:
                set_ownership(path, self.fs_group, read_only=False)
        return HostVolume(str(path), creates_sub_paths=True)

    def _api_data(self, plugin: str, name: str, files: dict[str, tuple[bytes, int]]) -> HostVolume:
        path = self._dir(plugin, name)
        write_atomic(path, files)
        if self.fs_group is not None:
            set_ownership(path, self.fs_group, read_only=True)
        return HostVolume(str(path), read_only=True)

    def _projected(self, name: str, spec: dict[str, Any]) -> HostVolume:
        ns = self.pod["metadata"]["namespace"]
        mode = int(spec.get("defaultMode", 0o644))
        files: dict[str, tuple[bytes, int]] = {}
        for src in spec.get("sources") or []:
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                ttl = int(t.get("expirationSeconds", 3600))
                sa = self.pod["spec"].get("serviceAccountName") or "default"
                aud = [t["audience"]] if t.get("audience") else []
                try:
                    token = self.lookups.token(sa, ttl, aud)
                except LookupError as e:
                    raise MountError(
                        "FailedMount", f'MountVolume.SetUp failed for volume "{name}" : {e}'
                    ) from e
                files[t["path"]] = (token.encode(), mode)
                self._token_refresh[name] = time.monotonic() + 0.8 * ttl
            elif "configMap" in src or "secret" in src:
                secret = "secret" in src
                s = src["secret" if secret else "configMap"]
                obj = (self.lookups.secret if secret else self.lookups.configmap)(ns, s.get("name", ""))
                kind = "secret" if secret else "configmap"
                if obj is None:
                    if s.get("optional"):
                        continue
                    raise MountError(
                        "FailedMount",
                        f'MountVolume.SetUp failed for volume "{name}" : {kind} "{s.get("name")}" not found',
                    )
                files |= payload(
                    _data(obj, secret),
                    s.get("items"),
                    mode,
                    f"{kind} {ns}/{s.get('name')}",
                    bool(s.get("optional")),
                )
            elif "downwardAPI" in src:
                for item in src["downwardAPI"].get("items") or []:
                    value = field_value(item["fieldRef"]["fieldPath"], self.pod, self.pod_ip, self.host_ip)
                    files[item["path"]] = (value.encode(), int(item.get("mode", mode)))
        return self._api_data("projected", name, files)

    def _host_path(self, name: str, spec: dict[str, Any]) -> HostVolume:
        path, type_ = Path(spec["path"]), spec.get("type") or ""
        fail = f'MountVolume.SetUp failed for volume "{name}" : hostPath type check failed: {path}'
        if type_ == "DirectoryOrCreate" and not path.exists():
            path.mkdir(mode=0o755, parents=True)
        if type_ == "FileOrCreate" and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(0o644)
        checks = {"Directory": path.is_dir, "DirectoryOrCreate": path.is_dir, "File": path.is_file,
                  "FileOrCreate": path.is_file, "Socket": path.is_socket, "CharDevice": path.is_char_device,
                  "BlockDevice": path.is_block_device}  # fmt: skip
        if type_ in checks and not checks[type_]():
            raise MountError("FailedMount", f"{fail} is not a {type_.removesuffix('OrCreate').lower()}")
        return HostVolume(str(path))

    def _claim(self, name: str, spec: dict[str, Any]) -> HostVolume:
        meta = self.pod["metadata"]
        ns, claim = meta["namespace"], spec["claimName"]
        prefix = f"error processing PVC {ns}/{claim}"
        pvc = self.lookups.pvc(ns, claim)
        if pvc is None:
            raise MountError("FailedMount", f'{prefix}: persistentvolumeclaim "{claim}" not found')
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
            raise MountError("FailedMount", f"{prefix}: PVC is not bound")
        pv = self.lookups.pv(pv_name)
        if pv is None:
            raise MountError("FailedMount", f'{prefix}: persistentvolume "{pv_name}" not found')
        pv_spec = pv.get("spec") or {}
        read_only = bool(spec.get("readOnly"))
        if (pv_spec.get("csi") or {}).get("driver") == DISK_DRIVER:
            if "ReadWriteOnce" in (pv_spec.get("accessModes") or []):
                error = self.attachments.attach(
                    pv_name, self.pod["spec"]["nodeName"], self.key, ns, meta["name"]
                )
                if error:
                    raise MountError("FailedAttachVolume", error)
            path = self.storage / pv_spec["csi"]["volumeHandle"]
            if self.fs_group is not None and not read_only:
                set_ownership(path, self.fs_group, read_only=False)
            return HostVolume(str(path), read_only=read_only, creates_sub_paths=True)
        if "hostPath" in pv_spec:
            vol = self._host_path(name, pv_spec["hostPath"])
            return HostVolume(vol.path, read_only=read_only, creates_sub_paths=True)
        if "local" in pv_spec:
            return HostVolume(pv_spec["local"]["path"], read_only=read_only, creates_sub_paths=True)
        raise MountError(
            "FailedMount", f'{prefix}: persistentvolume "{pv_name}" has a source devcluster cannot mount'
        )
