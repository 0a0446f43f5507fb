"""The async HTTP prober of pods' ``GET /health`` (aiohttp): direct to the pod IP, or via the pod proxy.

The prober reaches each pod either directly (``http://<podIP>:<port>/health``) or through the API
server's pod proxy (``/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/health``), for operators that
run outside the cluster network, or (``auto``, the default mode: ``fallback_proxy`` set) directly
first and through the proxy when the direct connection fails (a NetworkPolicy, STRICT mTLS, a
private control plane); through the proxy it authenticates with the
operator's own through the proxy it authenticates with the
operator's own :class:`~omega_operator.credentials.Credentials` (the same object as the API client's,
so a rotated ServiceAccount token is followed here too, and a 401 re-reads it and retries once).
Probes run concurrently under one semaphore with a per-probe timeout; a probe never raises, it
returns a :class:`~omega_operator.health_report.ProbeResult` that says what happened. What a body
means is :mod:`omega_operator.health_report`'s business.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from omega_operator.credentials import Credentials
from omega_operator.health_report import ProbeOutcome, ProbeResult, parse_report


@dataclass(frozen=True)
class ProbeTarget:
    """One pod to probe."""

    namespace: str
    name: str
    ip: str | None
    port: int = 8000


@dataclass
class HealthProber:
    """Probes pods' ``/health`` concurrently (bounded), each with a timeout; never raises.

    One prober is shared by every OmegaVLM, so ``max_concurrency`` bounds the whole operator's
    probing however many objects there are. Use ``async with`` or call :meth:`close`.
    """

    timeout_s: float = 3.0
    max_concurrency: int = 32
    proxy: Credentials | None = None  # probe through the API server's pod proxy with these
    max_body_bytes: int = 64 * 1024
    # auto mode: probe directly, and through the pod proxy with these when the connection fails
    fallback_proxy: Credentials | None = None
    _sem: asyncio.Semaphore | None = field(default=None, init=False, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _proxy_session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    async def __aenter__(self) -> HealthProber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        for s in (self._session, self._proxy_session):
            if s is not None:
                await s.close()
        self._session = self._proxy_session = None

    def url_for(self, target: ProbeTarget, via: Credentials | None = None) -> str:
        """The URL probed for ``target`` (through the pod proxy of ``via``, default: ``self.proxy``)."""
        via = via or self.proxy
        if via is not None:
            return f"{via.host}/api/v1/namespaces/{target.namespace}/pods/{target.name}:{target.port}/proxy/health"
        return f"http://{target.ip}:{target.port}/health"

    def _session_get(self, via: Credentials | None = None) -> aiohttp.ClientSession:
        if via is not None and via is not self.proxy:  # auto mode's proxy session
            if self._proxy_session is None or self._proxy_session.closed:
                connector = aiohttp.TCPConnector(limit=0, ssl=via.ssl_context, enable_cleanup_closed=True)
                self._proxy_session = aiohttp.ClientSession(
                    headers={"Accept": "application/json"}, connector=connector
                )
            return self._proxy_session
        if self._session is None or self._session.closed:
            ssl_arg = self.proxy.ssl_context if self.proxy is not None else False
            # Connection limits are the semaphore's job; keep-alive off for direct probes because
            # pod IPs come and go.
            connector = aiohttp.TCPConnector(
                limit=0, ssl=ssl_arg, force_close=self.proxy is None, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(headers={"Accept": "application/json"}, connector=connector)
        return self._session

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(max(1, self.max_concurrency))
        return self._sem

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        """Probe one pod. Returns REPORT / HTTP_STATUS / UNREACHABLE, never raises. In auto mode
        (``fallback_proxy``), a direct probe that cannot connect is tried again through the proxy."""
        if self.proxy is None and self.fallback_proxy is None and not target.ip:
            return ProbeResult(target.name, ProbeOutcome.UNREACHABLE, error="pod has no IP yet")
        async with self._semaphore():
            if self.proxy is not None or self.fallback_proxy is None:
                return await self._attempt(target, self.proxy)
            direct = (
                await self._attempt(target, None)
                if target.ip
                else ProbeResult(target.name, ProbeOutcome.UNREACHABLE, error="pod has no IP yet")
            )
            if direct.outcome is not ProbeOutcome.UNREACHABLE or direct.http_status is not None:
                return direct
            proxied = await self._attempt(target, self.fallback_proxy)
            if proxied.outcome is ProbeOutcome.UNREACHABLE:  # both failed: say both
                return replace(
                    proxied, error=f"direct: {direct.error}; through the API server: {proxied.error}"
                )
            return proxied

    async def _attempt(self, target: ProbeTarget, via: Credentials | None) -> ProbeResult:
        start = time.monotonic()
        try:
            return await asyncio.wait_for(self._probe(target, start, via), timeout=self.timeout_s)
        except TimeoutError:
            return ProbeResult(
                target.name,
                ProbeOutcome.UNREACHABLE,
                error=f"timed out after {self.timeout_s:g}s ({self.url_for(target, via)})",
                duration_s=time.monotonic() - start,
            )
        except (aiohttp.ClientError, OSError) as exc:
            return ProbeResult(
                target.name,
                ProbeOutcome.UNREACHABLE,
                error=f"{type(exc).__name__}: {exc}",
                duration_s=time.monotonic() - start,
            )

    async def _get(self, url: str, via: Credentials | None = None) -> tuple[aiohttp.ClientResponse, bytes]:
        headers = {}
        auth = via.authorization() if via is not None else None
        if auth:
            headers["Authorization"] = auth
        async with self._session_get(via).get(url, allow_redirects=False, headers=headers) as resp:
            return resp, await resp.content.read(self.max_body_bytes)

    async def _probe(self, target: ProbeTarget, start: float, via: Credentials | None = None) -> ProbeResult:
        url = self.url_for(target, via)
        resp, body = await self._get(url, via)
        if resp.status == 401 and via is not None and via.reload():
            resp, body = await self._get(
                url, via
            )  # the token was rotated under us: once more, with the new one
        took = time.monotonic() - start
        report = parse_report(body)
        if via is not None and _is_proxy_error(resp.status, body):
            # The API server answered for the pod: it could not reach it.
            return ProbeResult(
                target.name,
                ProbeOutcome.UNREACHABLE,
                resp.status,
                error=_status_message(body),
                duration_s=took,
            )
        if report is not None:
            return ProbeResult(target.name, ProbeOutcome.REPORT, resp.status, report=report, duration_s=took)
        text = body.decode("utf-8", "replace").strip()[:300]
        return ProbeResult(
            target.name, ProbeOutcome.HTTP_STATUS, resp.status, error=text or resp.reason, duration_s=took
        )

    async def probe_many(self, targets: Iterable[ProbeTarget]) -> dict[str, ProbeResult]:
        """Probe all targets concurrently (within the shared bound); result keyed by pod name."""
        ts = list(targets)
        results = await asyncio.gather(*(self.probe(t) for t in ts))
        return {r.pod: r for r in results}


def _is_proxy_error(status: int, body: bytes) -> bool:
    """A ``kind: Status`` failure body is the API server's own answer, not the pod's."""
    if status < 400:
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return status in (502, 503)
    return isinstance(data, dict) and data.get("kind") == "Status"


def _status_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        return str(data.get("message") or data)[:300]
    except ValueError:
        return body.decode("utf-8", "replace")[:300]


def pod_port(pod: Mapping[str, Any], default: int = 8000) -> int:
    """The server port of a pod: the container port named ``http``, else the first one, else ``default``."""
    ports: list[Mapping[str, Any]] = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        ports.extend(c.get("ports") or [])
    for p in ports:
        if p.get("name") == "http" and p.get("containerPort"):
            return int(p["containerPort"])
    for p in ports:
        if p.get("containerPort"):
            return int(p["containerPort"])
    return default


def pod_target(pod: Mapping[str, Any], port: int | None = None) -> ProbeTarget:
    """A :class:`ProbeTarget` from a pod object (API JSON as a dict); port from the pod unless given."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return ProbeTarget(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        ip=status.get("podIP") or None,
        port=port if port is not None else pod_port(pod),
    )
