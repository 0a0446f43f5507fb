"""Kubernetes API calls of the operator (async, aiohttp): server-side apply, status patches,
deletes, discovery and Events. Nothing else in the package talks to the API server.

Credentials come from KUBECONFIG (or ~/.kube/config) or, inside a pod, the service account.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from omega_operator.api.models import GROUP, PLURAL, VERSION
from omega_operator.builders import FIELD_MANAGER

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


class ApiError(Exception):
    """A failed API call; `status` is the HTTP status (0 for a connection failure)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: connection problems, conflicts, throttling, server errors."""
        return self.status in (0, 409, 429) or self.status >= 500


@dataclass
class Credentials:
    host: str
    authorization: str | None
    ssl_context: ssl.SSLContext | bool


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """KUBECONFIG (or the given file) when present, else the in-cluster service account."""
    cfg = k8s_client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_kube_config(config_file=path, client_configuration=cfg)
    else:
        k8s_config.load_incluster_config(client_configuration=cfg)
    auth = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
    if not cfg.verify_ssl:
        ctx: ssl.SSLContext | bool = False
    else:
        ctx = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if cfg.ssl_ca_cert
            else ssl.create_default_context()
        )
        if cfg.cert_file and isinstance(ctx, ssl.SSLContext):
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return Credentials(host=cfg.host.rstrip("/"), authorization=auth, ssl_context=ctx)


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """REST path of a namespaced object (or of its collection when name is None)."""
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = _PLURALS.get(kind) or (PLURAL if kind == "OmegaVLM" else kind.lower() + "s")
    path = f"{prefix}/namespaces/{quote(namespace)}/{plural}"
    return f"{path}/{quote(name)}" if name else path


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
        self._background: set[asyncio.Task[None]] = set()

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self.creds.authorization:
                headers["Authorization"] = self.creds.authorization
            self._session = aiohttp.ClientSession(
                base_url=self.creds.host if "://" in self.creds.host else f"https://{self.creds.host}",
                headers=headers,
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
        try:
            async with session.request(
                method, path, json=body, params=params, headers={"Content-Type": content_type}
            ) as resp:
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
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
