"""The async HTTP prober of pods' ``GET /health`` (aiohttp): direct to the pod IP, or via the pod proxy.

The prober reaches each pod either directly (``http://<podIP>:<port>/health``, the default) or through
the API server's pod proxy (``/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/health``), for
operators that run outside the cluster network; through the proxy it authenticates with the
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
from dataclasses import dataclass, field
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
    _sem: asyncio.Semaphore | None = field(default=None, init=False, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    async def __aenter__(self) -> HealthProber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, target: ProbeTarget) -> str:
        """The URL probed for ``target``."""
        if self.proxy is not None:
            return (
                f"{self.proxy.host}/api/v1/namespaces/{target.namespace}"
                f"/pods/{target.name}:{target.port}/proxy/health"
            )
        return f"http://{target.ip}:{target.port}/health"

    def _session_get(self) -> aiohttp.ClientSession:
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
        """Probe one pod. Returns REPORT / HTTP_STATUS / UNREACHABLE, never raises."""
        if self.proxy is None and not target.ip:
            return ProbeResult(target.name, ProbeOutcome.UNREACHABLE, error="pod has no IP yet")
        async with self._semaphore():
            start = time.monotonic()
            try:
                return await asyncio.wait_for(self._probe(target, start), timeout=self.timeout_s)
            except TimeoutError:
                return ProbeResult(
                    target.name,
                    ProbeOutcome.UNREACHABLE,
                    error=f"timed out after {self.timeout_s:g}s ({self.url_for(target)})",
                    duration_s=time.monotonic() - start,
                )
            except (aiohttp.ClientError, OSError) as exc:
                return ProbeResult(
                    target.name,
                    ProbeOutcome.UNREACHABLE,
                    error=f"{type(exc).__name__}: {exc}",
                    duration_s=time.monotonic() - start,
                )

    async def _get(self, url: str) -> tuple[aiohttp.ClientResponse, bytes]:
        headers = {}
        auth = self.proxy.authorization() if self.proxy is not None else None
        if auth:
            headers["Authorization"] = auth
        async with self._session_get().get(url, allow_redirects=False, headers=headers) as resp:
            return resp, await resp.content.read(self.max_body_bytes)

    async def _probe(self, target: ProbeTarget, start: float) -> ProbeResult:
        url = self.url_for(target)
        resp, body = await self._get(url)
        if resp.status == 401 and self.proxy is not None and self.proxy.reload():
            resp, body = await self._get(url)  # the token was rotated under us: once more, with the new one
        took = time.monotonic() - start
        report = parse_report(body)
        if self.proxy is not None and _is_proxy_error(resp.status, body):
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
