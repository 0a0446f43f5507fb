"""Wait, before kopf starts, until the API server serves every resource the operator watches.

kopf lists the cluster's resources once at start-up (later only on CRD events). An API server that is
restarting answers discovery without some groups for a moment; kopf started then watches nothing and
the operator serves nothing until it restarts (found by `python -m bench.reliability control-plane`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from omega_operator.api.models import GROUP, PLURAL, VERSION
from omega_operator.api_error import ApiError
from omega_operator.kube import Kube

log = logging.getLogger(__name__)

#: a resource the handlers, indexes and writes need -> the discovery paths that may list it (any one)
REQUIRED: dict[str, tuple[str, ...]] = {
    PLURAL: (f"/apis/{GROUP}/{VERSION}",),
    "deployments": ("/apis/apps/v1",),
    "pods": ("/api/v1",),
    "poddisruptionbudgets": ("/apis/policy/v1", "/apis/policy/v1beta1"),
}
PATHS = tuple(dict.fromkeys(path for paths in REQUIRED.values() for path in paths))


def missing(listed: dict[str, set[str]]) -> list[str]:
    """The resources of ``REQUIRED`` that none of their paths lists in ``listed`` (path -> names)."""
    return [name for name, paths in REQUIRED.items() if not any(name in listed.get(p, set()) for p in paths)]


async def served(kube: Kube) -> dict[str, set[str]]:
    """The resource names each discovery path of REQUIRED lists now (empty where it fails)."""
    out: dict[str, set[str]] = {}
    for path in PATHS:
        try:
            data = await kube.request("GET", path)
        except (TimeoutError, ApiError, OSError):
            out[path] = set()
            continue
        out[path] = {str(r.get("name")) for r in data.get("resources") or []}
    return out


async def wait_until_served(kube: Kube, timeout: float = 300.0, interval: float = 1.0) -> None:
    """Return once every REQUIRED resource is served, twice in a row ``interval`` apart (a restarting
    API server can answer one discovery request before its groups are all registered); after
    ``timeout``, log what is missing and return (kopf then starts on what there is, as before)."""
    deadline = time.monotonic() + timeout
    complete_once = False
    while True:
        gaps = missing(await served(kube))
        if not gaps and complete_once:
            return
        complete_once = not gaps
        if time.monotonic() >= deadline:
            log.warning("starting while the API server does not serve %s", ", ".join(gaps))
            return
        if gaps:
            log.info("waiting for the API server to serve %s", ", ".join(gaps))
        await asyncio.sleep(interval)
