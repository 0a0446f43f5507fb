"""The /health prober through the API server's pod proxy, against devcluster pods (real HTTP end to
end: prober -> kube-apiserver -> pod process), and directly at the same pods' IPs."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client
from omega_operator.credentials import load_credentials
from omega_operator.health_report import ProbeOutcome
from omega_operator.prober import HealthProber, ProbeTarget, pod_target

from devcluster import Cluster
from tests.omega_operator.health_bodies import LOADING_BODY, READY_BODY

pytestmark = pytest.mark.devcluster


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


STUB = Path(__file__).with_name("health_stub.py")
IMAGE = "example.com/omega-test/health-stub:v1"
NS = "health-proxy"
PROXY_NS = "health-proxy-host"
# The contract's bodies; the ready one with an error text of its own (asserted below).
READY = {**READY_BODY, "flash_attn": {**READY_BODY["flash_attn"], "error": "ImportError: no flash_attn"}}
LOADING = LOADING_BODY


def stub_pod(name: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    env = {"PORT": "8000", "STUB_STATUS": str(status), "STUB_BODY": json.dumps(body)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": "cpu-0",
            "containers": [
                {
                    "name": "server",
                    "image": IMAGE,
                    "ports": [{"name": "http", "containerPort": 8000}],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def stub_pods(devcluster: Cluster) -> Iterator[dict[str, dict[str, Any]]]:
    devcluster.add_image(IMAGE, [sys.executable, str(STUB)])
    devcluster.kubectl("create", "namespace", NS)
    devcluster.apply([stub_pod("ok", 200, READY), stub_pod("loading", 503, LOADING)])

    def running() -> dict[str, dict[str, Any]] | None:
        items = devcluster.get("pods", "-n", NS)["items"]
        ready = {
            p["metadata"]["name"]: p
            for p in items
            if p["status"].get("podIP") and p["status"].get("phase") == "Running"
        }
        return ready if len(ready) == 2 else None

    pods: dict[str, dict[str, Any]] = devcluster.wait_for(running, timeout=60, what="stub pods running")

    # The process listens a moment after the pod turns Running.
    async def wait_listening() -> None:
        async with HealthProber(timeout_s=1) as prober:
            for _ in range(100):
                res = await prober.probe_many([pod_target(p) for p in pods.values()])
                if all(r.outcome is ProbeOutcome.REPORT for r in res.values()):
                    return
                await asyncio.sleep(0.2)
        raise TimeoutError("stub servers not answering")

    asyncio.run(wait_listening())
    yield pods
    devcluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def host_ip() -> str:
    """This machine's non-loopback IPv4 (the API server refuses to proxy to loopback pod IPs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
        ip = str(s.getsockname()[0])
    assert not ip.startswith("127."), "no non-loopback IPv4 address on this machine"
    return ip


def test_proxy_mode_through_the_api_server(devcluster: Cluster) -> None:
    """Pods whose IP is this machine's address, served by real HTTP servers in the test; the prober
    reaches them only through the API server's pod proxy (bearer token, TLS, the proxy path)."""
    ip = host_ip()
    core = client.CoreV1Api(devcluster.api_client())
    devcluster.kubectl("create", "namespace", PROXY_NS)

    async def serve(status: int, body: dict[str, Any]) -> tuple[web.AppRunner, int]:
        async def h(_: web.Request) -> web.Response:
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_get("/health", h)
        runner = web.AppRunner(app, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, ip, 0)
        await site.start()
        return runner, int(runner.addresses[0][1])

    def make_pod(name: str) -> None:
        # Bound to a node no kubelet runs, so the test plays the kubelet: it writes the status.
        pod: Any = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": PROXY_NS},
            "spec": {"nodeName": "proxy-test-node", "containers": [{"name": "server", "image": IMAGE}]},
        }
        core.create_namespaced_pod(PROXY_NS, pod)
        status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
        core.patch_namespaced_pod_status(name, PROXY_NS, status)

    proxy = load_credentials(str(devcluster.kubeconfig))
    assert proxy.authorization() and proxy.host.startswith("https://")

    async def main() -> dict[str, Any]:
        ok_runner, ok_port = await serve(200, READY)
        loading_runner, loading_port = await serve(503, LOADING)
        try:
            await asyncio.to_thread(make_pod, "ok")
            await asyncio.to_thread(make_pod, "loading")
            async with HealthProber(timeout_s=5, proxy=proxy) as prober:
                res = await prober.probe_many(
                    [
                        ProbeTarget(PROXY_NS, "ok", None, ok_port),
                        ProbeTarget(PROXY_NS, "loading", None, loading_port),
                    ]
                )
                # The API server answers for the pod (kind: Status): unreachable, not the pod's answer.
                res["refused"] = await prober.probe(ProbeTarget(PROXY_NS, "ok", None, free_port(ip)))
                res["missing"] = await prober.probe(ProbeTarget(PROXY_NS, "no-such-pod", None, ok_port))
                return res
        finally:
            await ok_runner.cleanup()
            await loading_runner.cleanup()

    try:
        res = asyncio.run(main())
    finally:
        devcluster.kubectl("delete", "namespace", PROXY_NS, "--wait=false", check=False)
    ok = res["ok"]
    assert ok.outcome is ProbeOutcome.REPORT and ok.ready and ok.report is not None, ok
    assert ok.report.flash_failed and ok.report.flash_error == "ImportError: no flash_attn"
    loading = res["loading"]
    assert loading.outcome is ProbeOutcome.REPORT and loading.http_status == 503 and not loading.ready
    assert res["refused"].outcome is ProbeOutcome.UNREACHABLE, res["refused"]
    assert res["missing"].outcome is ProbeOutcome.UNREACHABLE and res["missing"].http_status == 404


def test_proxy_mode_to_a_loopback_pod_is_unreachable_with_the_api_servers_reason(
    devcluster: Cluster, stub_pods: dict[str, dict[str, Any]]
) -> None:
    """devcluster pods live on 127.x addresses, which the API server refuses to proxy to: the prober
    must report that as unreachable with the API server's own words, not as the pod's answer."""
    proxy = load_credentials(str(devcluster.kubeconfig))

    async def main() -> Any:
        async with HealthProber(timeout_s=5, proxy=proxy) as prober:
            return await prober.probe(ProbeTarget(NS, "ok", None, 8000))

    r = asyncio.run(main())
    assert r.outcome is ProbeOutcome.UNREACHABLE and r.http_status == 400
    assert r.error == "address not allowed"


def test_direct_mode_at_the_pod_ip(stub_pods: dict[str, dict[str, Any]]) -> None:
    async def main() -> dict[str, Any]:
        async with HealthProber(timeout_s=2) as prober:
            return await prober.probe_many([pod_target(p) for p in stub_pods.values()])

    res = asyncio.run(main())
    assert res["ok"].ready and res["ok"].report is not None and res["ok"].report.attn == "sdpa"
    assert res["loading"].http_status == 503 and res["loading"].report is not None
    assert res["loading"].report.status == "loading"


def test_auto_mode_goes_through_the_api_server_when_the_direct_connection_fails(devcluster: Cluster) -> None:
    """auto: the direct connection is refused (as behind a NetworkPolicy), the pod proxy reaches the
    pod; when both fail, the result says both."""
    ip, ns = host_ip(), "health-proxy-auto"
    core = client.CoreV1Api(devcluster.api_client())
    devcluster.kubectl("create", "namespace", ns)
    proxy = load_credentials(str(devcluster.kubeconfig))

    async def main() -> tuple[Any, Any, Any]:
        async def h(_: web.Request) -> web.Response:
            return web.json_response(READY_BODY)

        app = web.Application()
        app.router.add_get("/health", h)
        runner = web.AppRunner(app, shutdown_timeout=0.2)
        await runner.setup()
        await web.TCPSite(runner, ip, 0).start()
        port = int(runner.addresses[0][1])
        try:

            def make_pod() -> None:
                pod: Any = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "ok", "namespace": ns},
                    "spec": {
                        "nodeName": "proxy-test-node",
                        "containers": [{"name": "server", "image": IMAGE}],
                    },
                }
                core.create_namespaced_pod(ns, pod)
                status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
                core.patch_namespaced_pod_status("ok", ns, status)

            await asyncio.to_thread(make_pod)
            async with HealthProber(timeout_s=5, fallback_proxy=proxy) as prober:
                # Directly, nothing answers at this address (refused); the API server reaches the pod.
                via_proxy = await prober.probe(ProbeTarget(ns, "ok", "127.0.0.1", port))
                direct = await prober.probe(ProbeTarget(ns, "ok", ip, port))  # direct works: no proxy
                both = await prober.probe(ProbeTarget(ns, "ok", "127.0.0.1", free_port(ip)))
                return via_proxy, direct, both
        finally:
            await runner.cleanup()

    try:
        via_proxy, direct, both = asyncio.run(main())
    finally:
        devcluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    assert via_proxy.outcome is ProbeOutcome.REPORT and via_proxy.ready, via_proxy
    assert direct.outcome is ProbeOutcome.REPORT and direct.ready, direct
    assert both.outcome is ProbeOutcome.UNREACHABLE
    assert both.error.startswith("direct: ") and "through the API server: " in both.error, both.error
