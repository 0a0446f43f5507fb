"""A container's user, groups and runAsNonRoot check, resolved the way a kubelet does (pure functions).

``securityContext`` of the container overrides the pod's field by field. The uid is ``runAsUser``
or the image's USER; the gid ``runAsGroup``, else the image's group when the image's user is used,
else 0 (a runtime takes it from the image's /etc/passwd, where an unknown uid has none). The
supplementary groups are the gid, ``fsGroup`` and ``supplementalGroups``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devcluster.images import ImageEntry
from devcluster.podenv import ContainerConfigError


@dataclass(frozen=True)
class Credentials:
    """Who the container's process is."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _field(pod: dict[str, Any], container: dict[str, Any], name: str) -> Any:
    """The effective value of one securityContext field: the container's, else the pod's."""
    own = (container.get("securityContext") or {}).get(name)
    if own is not None:
        return own
    return (pod.get("spec", {}).get("securityContext") or {}).get(name)


def pod_ref(pod: dict[str, Any]) -> str:
    """The kubelet's ``format.Pod``: ``name_namespace(uid)``."""
    meta = pod.get("metadata", {})
    return f"{meta.get('name', '')}_{meta.get('namespace', '')}({meta.get('uid', '')})"


def verify_run_as_non_root(pod: dict[str, Any], container: dict[str, Any], image_uid: int) -> None:
    """The kubelet's verifyRunAsNonRoot: raises ContainerConfigError with the kubelet's own message."""
    if not _field(pod, container, "runAsNonRoot"):
        return
    run_as = _field(pod, container, "runAsUser")
    name = container.get("name", "")
    if run_as is not None:
        if int(run_as) == 0:
            raise ContainerConfigError(
                f'container\'s runAsUser breaks non-root policy (pod: "{pod_ref(pod)}", container: {name})'
            )
        return
    if image_uid == 0:
        raise ContainerConfigError(
            f'container has runAsNonRoot and image will run as root (pod: "{pod_ref(pod)}", container: {name})'
        )


def credentials(pod: dict[str, Any], container: dict[str, Any], image: ImageEntry) -> Credentials:
    """uid, gid, supplementary groups and $HOME of ``container`` (after the runAsNonRoot check)."""
    verify_run_as_non_root(pod, container, image.uid)
    run_as = _field(pod, container, "runAsUser")
    uid = image.uid if run_as is None else int(run_as)
    group = _field(pod, container, "runAsGroup")
    if group is not None:
        gid = int(group)
    elif run_as is None or int(run_as) == image.uid:
        gid = image.gid
    else:
        gid = 0
    spec_sc = pod.get("spec", {}).get("securityContext") or {}
    extra = [spec_sc["fsGroup"]] if spec_sc.get("fsGroup") is not None else []
    extra += list(spec_sc.get("supplementalGroups") or [])
    groups: list[int] = []
    for g in (gid, *extra):
        if int(g) not in groups:
            groups.append(int(g))
    return Credentials(uid=uid, gid=gid, groups=tuple(groups), home=image.home(uid))


def fs_group(pod: dict[str, Any]) -> int | None:
    """The pod's ``fsGroup`` (volumes that support ownership management are given to it)."""
    value = (pod.get("spec", {}).get("securityContext") or {}).get("fsGroup")
    return None if value is None else int(value)
