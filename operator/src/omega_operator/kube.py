"""Kubernetes API calls of the operator (async, aiohttp): server-side apply, status patches,
deletes, discovery and Events. Nothing else in the package talks to the API server.

Credentials (KUBECONFIG, ~/.kube/config or, inside a pod, the ServiceAccount) come from
:mod:`omega_operator.credentials`; the bearer token is taken per request, so a rotated token file
is followed, and a 401 re-reads it and retries once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from omega_operator.api.models import GROUP, PLURAL, VERSION
from omega_operator.api_error import ApiError
from omega_operator.builders import FIELD_MANAGER
from omega_operator.conditions import rfc3339
from omega_operator.credentials import Credentials, load_credentials

__all__ = ["ApiError", "Credentials", "Kube", "load_credentials", "object_path"]

log = logging.getLogger(__name__)

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

_PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Pod": "pods",
    "Event": "events",
}


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """REST path of a namespaced object (or of its collection when name is None)."""
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = _PLURALS.get(kind) or (PLURAL if kind == "OmegaVLM" else kind.lower() + "s")
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


# The first release whose API servers take PodDisruptionBudget.spec.unhealthyPodEvictionPolicy
# without a feature gate (beta, on by default; alpha behind a gate in 1.26, GA in 1.31).
UNHEALTHY_POD_EVICTION_POLICY_SINCE = (1, 27)


def parse_server_version(data: dict[str, Any]) -> tuple[int, int]:
    """(major, minor) from a /version body; tolerates vendor forms such as minor "27+" (EKS)."""
    major = re.match(r"\d+", str(data.get("major") or ""))
    minor = re.match(r"\d+", str(data.get("minor") or ""))
    if major and minor:
        return int(major.group()), int(minor.group())
    git = re.match(r"v?(\d+)\.(\d+)", str(data.get("gitVersion") or ""))
    if git:
        return int(git.group(1)), int(git.group(2))
    raise ApiError(502, f"unreadable /version body: {data}")


class Kube:
    """One aiohttp session against the API server."""

    def __init__(
        self, creds: Credentials, request_timeout: float = 30.0, instance: str | None = None
    ) -> None:
        self.creds = creds
        self.timeout = aiohttp.ClientTimeout(total=request_timeout)
        self.instance = instance or os.environ.get("HOSTNAME") or f"omega-vlm-operator-{uuid.uuid4().hex[:6]}"
        self._session: aiohttp.ClientSession | None = None
        self._pdb_version: str | None = None
        self._server_version: tuple[int, int] | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self.creds.host if "://" in self.creds.host else f"https://{self.creds.host}",
                headers={"Accept": "application/json"},
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(ssl=self.creds.ssl_context, limit=32),
            )
        return self._session

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        session = await self.session()
        for attempt in (1, 2):
            headers = {"Content-Type": content_type}
            auth = self.creds.authorization()
            if auth:
                headers["Authorization"] = auth
            try:
                return await self._send(session, method, path, body, params, headers)
            except ApiError as exc:
                # A rotated ServiceAccount token: the old one is refused before our next look at
                # the file. Re-read it now and retry once, only when it really changed.
                if exc.status == 401 and attempt == 1 and self.creds.reload():
                    log.info("401 from the API server: retrying with the re-read token")
                    continue
                raise
        raise AssertionError("unreachable")

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: Any,
        params: dict[str, str] | None,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        try:
            async with session.request(method, path, json=body, params=params, headers=headers) as resp:
                text = await resp.text() if resp.content_length != 0 else ""
                try:
                    data = json.loads(text) if text else {}
                except ValueError:  # e.g. an HTML 502 page from a proxy in front of the API server
                    data = {"message": f"{resp.status} {resp.reason}: {' '.join(text.split())[:200]}"}
                    if resp.status < 400:
                        raise ApiError(502, f"not JSON: {data['message']}") from None
                if resp.status >= 400:
                    msg = data.get("message") if isinstance(data, dict) else str(data)
                    raise ApiError(resp.status, msg or resp.reason or "")
                return data if isinstance(data, dict) else {}
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ApiError(0, f"{type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------ reads

    async def pdb_api_version(self) -> str:
        """policy/v1 when the cluster serves it (1.21+), else policy/v1beta1 (discovery, cached)."""
        if self._pdb_version is None:
            try:
                data = await self.request("GET", "/apis/policy")
                versions = {v.get("groupVersion") for v in data.get("versions") or []}
            except ApiError as exc:
                if exc.status != 404:
                    raise
                versions = set()
            self._pdb_version = "policy/v1" if "policy/v1" in versions else "policy/v1beta1"
        return self._pdb_version

    async def server_version(self) -> tuple[int, int]:
        """(major, minor) of the API server (GET /version, cached)."""
        if self._server_version is None:
            self._server_version = parse_server_version(await self.request("GET", "/version"))
        return self._server_version

    async def pdb_always_allow(self) -> bool:
        """Whether PodDisruptionBudgets take `unhealthyPodEvictionPolicy` (on by default from 1.27)."""
        return await self.server_version() >= UNHEALTHY_POD_EVICTION_POLICY_SINCE

    # ------------------------------------------------------------ writes

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply under the operator's field manager (force: we own these fields)."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        return await self.request(
            "PATCH",
            path,
            body=obj,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type=APPLY,
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            await self.request(
                "DELETE",
                object_path(api_version, kind, namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the OmegaVLM's status subresource."""
        path = object_path(f"{GROUP}/{VERSION}", "OmegaVLM", namespace, name) + "/status"
        return await self.request("PATCH", path, body={"status": patch}, content_type=MERGE)

    def event_soon(self, owner: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event in the background: the reconcile does not wait for it."""
        task = asyncio.get_running_loop().create_task(self.event(owner, type_, reason, message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def event(
        self, owner: dict[str, Any], type_: str, reason: str, message: str, component: str = FIELD_MANAGER
    ) -> None:
        """Post a core/v1 Event about the OmegaVLM (best effort: a failure is logged, not raised)."""
        meta = owner.get("metadata") or {}
        now = rfc3339(datetime.now(UTC))
        ns = meta.get("namespace") or "default"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": owner.get("apiVersion") or f"{GROUP}/{VERSION}",
                "kind": owner.get("kind") or "OmegaVLM",
                "name": meta.get("name"),
                "namespace": ns,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.request("POST", object_path("v1", "Event", ns), body=body)
        except ApiError as exc:
            log.warning("could not post event %s/%s %s: %s", ns, meta.get("name"), reason, exc)
