"""What the launcher does for one container: its binds, working directory and user (plan builders).

The plan is JSON for ``devcluster/launch.py``. Binds come in the order a runtime mounts them:
the image's own directories and passwd files (a fresh writable layer per container start), then the volume
mounts sorted by depth (containerd's order), then the termination-message file.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from devcluster.apiproxy import SERVICE_NAMES
from devcluster.images import ImageEntry
from devcluster.security import Credentials
from devcluster.volumes import SA_MOUNT, SA_VOLUME, HostVolume

LAUNCHER = str(Path(__file__).resolve().parent / "launch.py")
# The "image's program": the repository and the Python that runs it (its venv and installation).
# In a real image these live in directories of their own; here they are wherever the checkout is,
# which may be under a path a pod mounts a volume at (a clone in /tmp, and an emptyDir at /tmp).
PROGRAM_PATHS = tuple(
    dict.fromkeys(
        os.path.realpath(p) for p in (Path(__file__).resolve().parent.parent, sys.prefix, sys.base_prefix)
    )
)
# Host top-level entries a pod does not see (an image has an empty /mnt; lost+found is the disk's).
SKIP_TOP = ("mnt", "lost+found")
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


def launcher_argv(plan_path: Path, *command: str) -> list[str]:
    """The command line that enters a container (or joins one) by ``plan_path``."""
    return [sys.executable, "-I", "-S", LAUNCHER, str(plan_path), *command]


def service_account_volume(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The projected token volume a 1.22+ cluster adds (kube-api-access-*), unless automount is off."""
    if pod.get("spec", {}).get("automountServiceAccountToken") is False:
        return None
    return {
        "name": SA_VOLUME,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                    }
                },
            ],
        },
    }


def pod_volumes(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod's volumes plus the service-account volume the kubelet mounts."""
    volumes = list(pod.get("spec", {}).get("volumes") or [])
    sa = service_account_volume(pod)
    return [*volumes, sa] if sa is not None else volumes


def volume_mounts(pod: dict[str, Any], container: dict[str, Any]) -> list[dict[str, Any]]:
    """The container's mounts plus the token mount (unless it mounts something there itself)."""
    mounts = list(container.get("volumeMounts") or [])
    if service_account_volume(pod) is not None and not any(m.get("mountPath") == SA_MOUNT for m in mounts):
        mounts.append({"name": SA_VOLUME, "mountPath": SA_MOUNT, "readOnly": True})
    return mounts


def sub_path(root: str, sub: str) -> str:
    """``root/sub``; a subPath that is absolute or leaves the volume is refused, as the kubelet does."""
    if sub.startswith("/") or ".." in sub.split("/"):
        raise ValueError(f"invalid subPath {sub!r}: must be a relative path inside the volume")
    return os.path.join(root, sub)


def binds(
    pod: dict[str, Any],
    container: dict[str, Any],
    volumes: dict[str, HostVolume],
    layer: list[tuple[str, str]],
    termination_log: str,
    expand: Any = None,
) -> list[dict[str, Any]]:
    """The launcher's binds for one container (``layer``: (host dir, image path) pairs)."""
    out: list[dict[str, Any]] = [{"source": host, "target": path} for host, path in layer]
    mounts: list[dict[str, Any]] = []
    for m in volume_mounts(pod, container):
        vol = volumes[m["name"]]
        source = vol.path
        sub = m.get("subPath") or (expand(m["subPathExpr"]) if m.get("subPathExpr") and expand else "")
        bind: dict[str, Any] = {"target": m["mountPath"]}
        if sub:
            source = sub_path(vol.path, sub)
            if vol.creates_sub_paths:
                bind["make_source_mode"] = os.stat(vol.path).st_mode & 0o7777
        bind["source"] = source
        bind["read_only"] = bool(m.get("readOnly")) or vol.read_only
        mounts.append(bind)
    mounts.sort(key=lambda b: len([c for c in b["target"].split("/") if c]))
    out += mounts
    out += program_binds([m["target"] for m in mounts])
    out.append(
        {
            "source": termination_log,
            "target": container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH,
        }
    )
    return out


def under(path: str, parent: str) -> bool:
    """Whether ``path`` is ``parent`` or inside it."""
    parent = parent.rstrip("/") or "/"
    return path == parent or path.startswith(parent if parent == "/" else parent + "/")


def program_binds(mount_targets: list[str], program: tuple[str, ...] = PROGRAM_PATHS) -> list[dict[str, Any]]:
    """Binds that keep the image's program visible where a volume is mounted over its host path.

    A real image keeps its program out of the way of volume mount paths; the stand-in image's
    program is the checkout, so a checkout under ``/tmp`` would vanish under an ``emptyDir`` at
    ``/tmp``. Each program path under a mount target is bound again on top of the volume, read-only.
    """
    return [
        {"source": p, "target": p, "read_only": True}
        for p in program
        if any(under(p, t) for t in mount_targets)
    ]


def start_plan(
    root: Path, creds: Credentials, cwd: str, argv: list[str], bind_list: list[dict[str, Any]], sync_fd: int
) -> dict[str, Any]:
    """The plan of ``mode: start``."""
    return {
        "mode": "start",
        "root": str(root),
        "skip": list(SKIP_TOP),
        "binds": bind_list,
        "cwd": cwd,
        "uid": creds.uid,
        "gid": creds.gid,
        "groups": list(creds.groups),
        "argv": argv,
        "sync_fd": sync_fd,
    }


def join_plan(pid: int, creds: Credentials, cwd: str) -> dict[str, Any]:
    """The plan of ``mode: join`` (exec probes and hooks in the running container ``pid``)."""
    return {"mode": "join", "pid": pid, "cwd": cwd, "uid": creds.uid, "gid": creds.gid,
            "groups": list(creds.groups), "argv": []}  # fmt: skip


def passwd_files(image: ImageEntry, host_passwd: str, host_group: str) -> tuple[str, str]:
    """The image's /etc/passwd and /etc/group: the host's, plus the image's users and their groups."""
    uids = {line.split(":")[2] for line in host_passwd.splitlines() if line.count(":") >= 6}
    gids = {line.split(":")[2] for line in host_group.splitlines() if line.count(":") >= 3}
    passwd = [u.line() for u in image.users if str(u.uid) not in uids]
    group = [f"{u.name}:x:{u.gid}:" for u in image.users if str(u.gid) not in gids]
    return (host_passwd.rstrip("\n") + "\n" + "".join(p + "\n" for p in passwd),
            host_group.rstrip("\n") + "\n" + "".join(g + "\n" for g in group))  # fmt: skip


def hosts_file(host_hosts: str, pod_ip: str, hostname: str, service_ip: str) -> str:
    """The kubelet-managed /etc/hosts: the host's, the pod's own name, and the kubernetes Service."""
    lines = [host_hosts.rstrip("\n"), f"{pod_ip}\t{hostname}", f"{service_ip}\t{' '.join(SERVICE_NAMES)}"]
    return "\n".join(lines) + "\n"


def fresh_layer(container_dir: Path, image: ImageEntry, hosts: str) -> list[tuple[str, str]]:
    """The image's own directories, its /etc/passwd and /etc/group, and the pod's /etc/hosts, as a
    new writable layer (what the last start wrote is gone)."""
    layer = container_dir / "layer"
    shutil.rmtree(layer, ignore_errors=True)
    (layer / "etc").mkdir(parents=True)
    passwd, group = passwd_files(image, Path("/etc/passwd").read_text(), Path("/etc/group").read_text())
    files = {"passwd": passwd, "group": group, "hosts": hosts}
    out = []
    for name, text in files.items():
        (layer / "etc" / name).write_text(text)
        out.append((str(layer / "etc" / name), f"/etc/{name}"))
    for d in image.dirs:
        host = layer / d.path.lstrip("/")
        host.mkdir(parents=True)
        os.chown(host, d.uid, d.gid)
        host.chmod(d.mode)
        out.append((str(host), d.path))
    return out


def fresh_termination_log(container_dir: Path) -> Path:
    """An empty termination-message file any user of the container can write."""
    path = container_dir / "termination-log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    path.chmod(0o666)
    return path
