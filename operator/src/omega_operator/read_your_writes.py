"""Read-your-writes: prefer the operator's own last write over an older watch-cache copy. Pure.

The watch caches (kopf indexes) lag behind our writes: a reconcile that starts before the watch
event of our last status patch or apply has arrived would otherwise act on the older copy (and
write again, or flap). Which copy is newer is told by ``metadata.resourceVersion`` (an etcd
revision, so a number on every API server we run against).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def resource_version(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd revision); 0 when it is not one."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def own_status(body: Mapping[str, Any], written: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The status to reconcile with when our last status patch (``written``, the object the patch
    returned) is newer than ``body``; None when ``body``'s own status is current."""
    if written is not None and resource_version(written) > resource_version(body):
        return copy.deepcopy(dict(written.get("status") or {}))
    return None


@dataclass(frozen=True)
class Applied:
    """A child as our last apply returned it, and whether the watch cache has shown it since."""

    obj: dict[str, Any]
    seen: bool = False


def newest_child(
    cached: dict[str, Any] | None, applied: Applied | None
) -> tuple[dict[str, Any] | None, Applied | None]:
    """The copy of a child to reconcile with, and the updated :class:`Applied` record.

    The cache's copy, unless our own last apply is newer (its event not in yet). Once the cache
    has shown our write, the cache is the truth again: a child missing from it then was deleted
    by someone else and must be recreated.
    """
    if applied is None:
        return cached, None
    if cached is not None and resource_version(cached) >= resource_version(applied.obj):
        return cached, Applied(applied.obj, seen=True)
    if cached is None:
        return (None if applied.seen else applied.obj), applied
    return applied.obj, applied
