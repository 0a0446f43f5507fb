"""The operator's SRE metrics, through the code paths that record them: /health probes of real HTTP
servers (latency, failures by reason), reconciles against a real HTTP API stand-in that fails in
each way (errors by kind, durations), the replicas and condition gauges a reconcile writes, and
rollbacks by scope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from omega_operator import metrics
from omega_operator.kube import ApiError, Credentials, Kube
from omega_operator.prober import HealthProber
from omega_operator.reconcile import Observed, _probe, reconcile
from prometheus_client import REGISTRY

from tests.omega_operator.health_bodies import READY_BODY
from tests.omega_operator.test_prober import free_port, json_handler, serve


def value(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def pod(name: str, port: int, ip: str | None = "127.0.0.1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"containers": [{"name": "server", "ports": [{"name": "http", "containerPort": port}]}]},
        "status": {"podIP": ip} if ip else {},
    }


def test_every_label_value_is_exported_from_zero() -> None:
    for reason in metrics.PROBE_FAILURE_REASONS:
        assert (
            REGISTRY.get_sample_value("omega_operator_health_probe_failures_total", {"reason": reason})
            is not None
        )
    for scope in ("fleet", "node"):
        assert REGISTRY.get_sample_value("omega_operator_rollbacks_total", {"scope": scope}) is not None
    for kind in metrics.RECONCILE_ERROR_KINDS:
        assert REGISTRY.get_sample_value("omega_operator_reconcile_errors_total", {"kind": kind}) is not None


def test_probes_count_latency_and_failures_by_reason() -> None:
    async def plain_404(_: web.Request) -> web.Response:
        return web.Response(status=404, text="not here")

    async def main() -> None:
        async with (
            serve(json_handler(READY_BODY)) as ready,
            serve(json_handler(READY_BODY, delay=2.0)) as slow,
            serve(plain_404, path="/other") as wrong,
            HealthProber(timeout_s=0.5) as prober,
        ):
            pods = [
                pod("ready", ready),
                pod("slow", slow),
                pod("wrong", wrong),
                pod("closed", free_port()),
                pod("no-ip", 8000, ip=None),  # not probed at all: reconcile only probes pods with an IP
            ]
            results = await _probe(prober, pods)
            assert set(results) == {"ready", "slow", "wrong", "closed"}

    before = {
        r: value("omega_operator_health_probe_failures_total", reason=r)
        for r in metrics.PROBE_FAILURE_REASONS
    }
    count = value("omega_operator_health_probe_duration_seconds_count")
    ready = value("omega_operator_health_probes_total", result="ready")
    asyncio.run(main())
    after = {
        r: value("omega_operator_health_probe_failures_total", reason=r)
        for r in metrics.PROBE_FAILURE_REASONS
    }
    delta = {r: after[r] - before[r] for r in after}
    assert delta == {"timeout": 1, "connection": 1, "proxy": 0, "no_ip": 0, "no_health_body": 1}
    assert value("omega_operator_health_probe_duration_seconds_count") == count + 4
    assert value("omega_operator_health_probes_total", result="ready") == ready + 1
    # the timed-out probe's time is in the histogram: at least the timeout
    assert value("omega_operator_health_probe_duration_seconds_bucket", le="0.25") < count + 4


def test_a_pod_without_ip_is_a_no_ip_failure() -> None:
    async def main() -> None:
        async with HealthProber() as prober:
            from omega_operator.prober import pod_target

            r = await prober.probe(pod_target(pod("no-ip", 8000, ip=None)))
            metrics.observe_probe(r)

    before = value("omega_operator_health_probe_failures_total", reason="no_ip")
    asyncio.run(main())
    assert value("omega_operator_health_probe_failures_total", reason="no_ip") == before + 1


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def api_server(handler: Handler) -> AsyncIterator[Kube]:
    """A real HTTP server standing in for the API server, every path answered by ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kube = Kube(Credentials(host=f"http://127.0.0.1:{port}", authorization=None, ssl_context=False))
    try:
        yield kube
    finally:
        await kube.close()
        await runner.cleanup()


def body(spec: dict[str, Any], name: str = "m") -> dict[str, Any]:
    return {
        "apiVersion": "vlm.omega.io/v1alpha1",
        "kind": "OmegaVLM",
        "metadata": {"name": name, "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": spec,
    }


def answering(status: int) -> Handler:
    async def h(_: web.Request) -> web.Response:
        return web.json_response(
            {"kind": "Status", "message": f"stand-in {status}", "code": status}, status=status
        )

    return h


async def echo(request: web.Request) -> web.Response:
    """200 with the object the operator sent (an apply), or {} (discovery, status patches)."""
    if request.method == "GET" and request.path == "/version":
        return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
    if request.method == "GET":
        return web.json_response({"versions": [{"groupVersion": "policy/v1"}]})
    raw = await request.read()
    obj = json.loads(raw) if raw else {}
    return web.json_response(obj if "metadata" in obj else {})


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (403, "api_forbidden"),
        (409, "api_conflict"),
        (404, "api_not_found"),
        (500, "api_unavailable"),
        (400, "api_other"),
    ],
)
def test_failed_reconciles_count_errors_by_kind(minimal_spec: dict[str, Any], status: int, kind: str) -> None:
    async def main() -> None:
        async with api_server(answering(status)) as kube:
            with pytest.raises(ApiError):
                await reconcile(kube, body(minimal_spec), Observed())

    before = value("omega_operator_reconcile_errors_total", kind=kind)
    durations = value("omega_operator_reconcile_duration_seconds_count")
    asyncio.run(main())
    # (a 404 on discovery is no error, an old cluster without policy/v1: the 404 that fails is the apply's)
    assert value("omega_operator_reconcile_errors_total", kind=kind) == before + 1
    assert value("omega_operator_reconcile_duration_seconds_count") == durations + 1


def test_unreachable_api_server_and_invalid_spec_are_counted(minimal_spec: dict[str, Any]) -> None:
    async def unreachable() -> None:
        kube = Kube(
            Credentials(host=f"http://127.0.0.1:{free_port()}", authorization=None, ssl_context=False)
        )
        try:
            with pytest.raises(ApiError):
                await reconcile(kube, body(minimal_spec), Observed())
        finally:
            await kube.close()

    async def invalid() -> None:
        async with api_server(echo) as kube:
            res = await reconcile(kube, body({**minimal_spec, "replicas": -3}), Observed())
            assert res.outcome == "invalid"

    before = {
        k: value("omega_operator_reconcile_errors_total", kind=k) for k in ("api_unavailable", "invalid_spec")
    }
    asyncio.run(unreachable())
    asyncio.run(invalid())
    assert (
        value("omega_operator_reconcile_errors_total", kind="api_unavailable")
        == before["api_unavailable"] + 1
    )
    assert value("omega_operator_reconcile_errors_total", kind="invalid_spec") == before["invalid_spec"] + 1


def test_a_reconcile_exports_replicas_and_conditions(minimal_spec: dict[str, Any]) -> None:
    async def main() -> None:
        async with api_server(echo) as kube:
            res = await reconcile(kube, body({**minimal_spec, "replicas": 3}, name="rep"), Observed())
            assert res.outcome == "success", res

    asyncio.run(main())
    assert value("omega_operator_omegavlm_replicas", namespace="ml", name="rep") == 3
    assert (
        REGISTRY.get_sample_value(
            "omega_operator_omegavlm_ready_replicas", {"namespace": "ml", "name": "rep"}
        )
        == 0
    )
    ready = {
        s: REGISTRY.get_sample_value(
            "omega_operator_omegavlm_condition",
            {"namespace": "ml", "name": "rep", "type": "Ready", "status": s},
        )
        for s in ("True", "False", "Unknown")
    }
    assert sorted(ready.values()) == [0, 0, 1], ready  # one status of the three is the condition's
    assert ready["True"] == 0
    metrics.forget_object("ml", "rep")
    assert (
        REGISTRY.get_sample_value("omega_operator_omegavlm_replicas", {"namespace": "ml", "name": "rep"})
        is None
    )
    assert (
        REGISTRY.get_sample_value(
            "omega_operator_omegavlm_condition",
            {"namespace": "ml", "name": "rep", "type": "Ready", "status": "False"},
        )
        is None
    )


def test_rollbacks_by_scope() -> None:
    fleet = value("omega_operator_rollbacks_total", scope="fleet")
    node = value("omega_operator_rollbacks_total", scope="node")
    reason = value("omega_operator_fallbacks_total", reason="FlashAttentionLoadFailed")
    metrics.count_rollback("FlashAttentionLoadFailed")
    metrics.count_rollback("FlashAttentionLoadFailed", scope="node")
    assert value("omega_operator_rollbacks_total", scope="fleet") == fleet + 1
    assert value("omega_operator_rollbacks_total", scope="node") == node + 1
    assert value("omega_operator_fallbacks_total", reason="FlashAttentionLoadFailed") == reason + 2
    with pytest.raises(ValueError, match="scope"):
        metrics.count_rollback("FlashAttentionLoadFailed", scope="zone")
