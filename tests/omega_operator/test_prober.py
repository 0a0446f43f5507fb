"""The /health prober against real local HTTP servers (aiohttp on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from omega_operator.credentials import Credentials, from_configuration
from omega_operator.health_report import ProbeOutcome
from omega_operator.prober import HealthProber, ProbeTarget, pod_port, pod_target

from tests.omega_operator.health_bodies import LOADING_BODY, READY_BODY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler, path: str = "/health") -> AsyncIterator[int]:
    """A real HTTP server on 127.0.0.1 (ephemeral port) answering ``path`` with ``handler``."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.2)  # do not wait for deliberately slow handlers
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield int(port)
    finally:
        await runner.cleanup()


def free_port() -> int:
    """A port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_handler(body: Any, status: int = 200, delay: float = 0.0) -> Handler:
    async def h(_: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(body, status=status)

    return h


def target(port: int, name: str = "p") -> ProbeTarget:
    return ProbeTarget("ml", name, "127.0.0.1", port)


def test_ready_report_is_parsed() -> None:
    async def main() -> None:
        async with serve(json_handler(READY_BODY)) as port, HealthProber(timeout_s=2) as prober:
            r = await prober.probe(target(port))
        assert r.outcome is ProbeOutcome.REPORT and r.http_status == 200 and r.ready
        assert r.metric_result == "ready"
        assert r.report is not None
        assert r.report.attn == "sdpa" and r.report.attn_requested == "flash_attention_2"
        assert r.report.flash_failed and "toggled on" in r.report.flash_error
        assert r.report.device_names == ["NVIDIA H100 80GB HBM3"]
        assert r.duration_s > 0

    asyncio.run(main())


def test_loading_503_keeps_its_body() -> None:
    async def main() -> None:
        async with serve(json_handler(LOADING_BODY, status=503)) as port, HealthProber(timeout_s=2) as prober:
            r = await prober.probe(target(port))
        assert r.outcome is ProbeOutcome.REPORT and r.http_status == 503
        assert not r.ready and r.metric_result == "not_ready"
        assert r.report is not None and r.report.status == "loading"
        assert not r.report.flash_failed  # loading is not a failure

    asyncio.run(main())


def test_non_health_answer_is_an_http_status() -> None:
    async def h(_: web.Request) -> web.Response:
        return web.Response(status=500, text="Internal Server Error")

    async def main() -> None:
        async with serve(h) as port, HealthProber(timeout_s=2) as prober:
            r = await prober.probe(target(port))
        assert r.outcome is ProbeOutcome.HTTP_STATUS and r.http_status == 500 and r.report is None
        assert r.error == "Internal Server Error" and r.metric_result == "not_ready"

    asyncio.run(main())


def test_timeout_is_unreachable_and_bounded() -> None:
    async def main() -> None:
        async with serve(json_handler(READY_BODY, delay=5)) as port, HealthProber(timeout_s=0.3) as prober:
            t0 = time.monotonic()
            r = await prober.probe(target(port))
            took = time.monotonic() - t0
        assert r.outcome is ProbeOutcome.UNREACHABLE and "timed out" in (r.error or "")
        assert took < 2.0
        assert r.metric_result == "unreachable"

    asyncio.run(main())


def test_connection_refused_is_unreachable() -> None:
    async def main() -> None:
        async with HealthProber(timeout_s=2) as prober:
            r = await prober.probe(target(free_port()))
        assert r.outcome is ProbeOutcome.UNREACHABLE and r.error
        assert "connect" in r.error.lower() or "refused" in r.error.lower()

    asyncio.run(main())


def test_pod_without_ip_is_unreachable_without_a_request() -> None:
    async def main() -> None:
        async with HealthProber() as prober:
            r = await prober.probe(ProbeTarget("ml", "p", None, 8000))
        assert r.outcome is ProbeOutcome.UNREACHABLE and r.error == "pod has no IP yet"

    asyncio.run(main())


def test_probe_many_is_concurrent_bounded_and_a_slow_pod_does_not_hold_the_rest() -> None:
    in_flight = 0
    peak = 0

    async def h(_: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return web.json_response(READY_BODY)

    async def main() -> None:
        async with (
            serve(h) as port,
            serve(json_handler(READY_BODY, delay=10)) as slow,
            HealthProber(timeout_s=1.0, max_concurrency=4) as prober,
        ):
            targets = [target(port, f"p{i}") for i in range(12)] + [target(slow, "slow")]
            t0 = time.monotonic()
            res = await prober.probe_many(targets)
            took = time.monotonic() - t0
        assert set(res) == {f"p{i}" for i in range(12)} | {"slow"}
        assert all(res[f"p{i}"].ready for i in range(12))
        assert res["slow"].outcome is ProbeOutcome.UNREACHABLE
        assert peak <= 4  # the slow one holds one slot too
        assert peak >= 2  # but they did run concurrently
        # 13 probes, 4 at a time, 0.2 s each (one 1 s timeout among them): far below serial 3.4 s
        assert took < 3.0

    asyncio.run(main())


def test_proxy_mode_uses_the_pod_proxy_path_with_the_token() -> None:
    """A real HTTP 'API server' that checks the path and the bearer token like the pod proxy does."""
    seen: list[tuple[str, str | None]] = []

    async def h(req: web.Request) -> web.Response:
        seen.append((req.path, req.headers.get("Authorization")))
        if req.match_info["pod"] == "gone":
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": "error trying to reach service: dial tcp 127.0.0.9:8000: connect: connection refused",
                "reason": "ServiceUnavailable",
                "code": 503,
            }
            return web.json_response(status, status=503)
        if req.match_info["pod"] == "loading":
            return web.json_response(LOADING_BODY, status=503)
        return web.json_response(READY_BODY)

    async def main() -> None:
        async with serve(h, path="/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/health") as port:
            proxy = Credentials(f"http://127.0.0.1:{port}", "Bearer s3cret", ssl_context=False)
            async with HealthProber(timeout_s=2, proxy=proxy) as prober:
                # no pod IP needed through the proxy
                res = await prober.probe_many(
                    [ProbeTarget("ml", n, None, 8000) for n in ("ok", "loading", "gone")]
                )
        assert res["ok"].ready
        assert res["loading"].outcome is ProbeOutcome.REPORT and res["loading"].http_status == 503
        assert res["gone"].outcome is ProbeOutcome.UNREACHABLE and "connection refused" in (
            res["gone"].error or ""
        )
        assert ("/api/v1/namespaces/ml/pods/ok:8000/proxy/health", "Bearer s3cret") in seen

    asyncio.run(main())


def test_credentials_from_kubernetes_configuration() -> None:
    from kubernetes.client import Configuration

    cfg = Configuration()
    cfg.host = "https://127.0.0.1:6443/"
    cfg.api_key = {"authorization": "Bearer abc"}
    cfg.verify_ssl = False
    creds = from_configuration(cfg)
    assert (creds.host, creds.authorization(), creds.ssl_context) == (
        "https://127.0.0.1:6443",
        "Bearer abc",
        False,
    )
    cfg.verify_ssl = True
    assert from_configuration(cfg).ssl_context is not False


def test_pod_target_reads_ip_and_port() -> None:
    pod = {
        "metadata": {"name": "a", "namespace": "ml"},
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "ports": [
                        {"name": "metrics", "containerPort": 9000},
                        {"name": "http", "containerPort": 8080},
                    ],
                }
            ]
        },
        "status": {"podIP": "127.0.0.7"},
    }
    assert pod_port(pod) == 8080
    assert pod_target(pod) == ProbeTarget("ml", "a", "127.0.0.7", 8080)
    assert pod_target({"metadata": {"name": "b"}}).port == 8000
