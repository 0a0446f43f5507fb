"""A rotated bearer token file is followed by the API client and the pod-proxy prober alike.

A real local HTTP server stands in for the API server: it accepts only the tokens it is told are
valid (401 otherwise, as kube-apiserver does for an expired ServiceAccount token) and records the
Authorization header of every request it gets.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web
from kubernetes import client
from omega_operator.credentials import Credentials, load_credentials
from omega_operator.health_report import ProbeOutcome
from omega_operator.kube import ApiError, Kube
from omega_operator.prober import HealthProber, ProbeTarget

from devcluster import Cluster
from tests.omega_operator.health_bodies import READY_BODY

DISCOVERY = "/apis/policy"
PROXY = "/api/v1/namespaces/ml/pods/p:8000/proxy/health"


@dataclass
class FakeApiServer:
    valid: set[str]
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auths(self, path: str | None = None) -> list[str | None]:
        return [a for p, a in self.seen if path is None or p == path]

    async def handle(self, req: web.Request) -> web.Response:
        auth = req.headers.get("Authorization")
        self.seen.append((req.path, auth))
        if auth is None or auth.removeprefix("Bearer ") not in self.valid:
            status = {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401}
            return web.json_response({**status, "message": "Unauthorized"}, status=401)
        if req.path == PROXY:
            return web.json_response(READY_BODY)
        return web.json_response({"kind": "APIGroup", "versions": [{"groupVersion": "policy/v1"}]})


@asynccontextmanager
async def api_server(*valid: str) -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(set(valid))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = int(runner.addresses[0][1])
    try:
        yield server
    finally:
        await runner.cleanup()


def rotate(path: Path, token: str) -> None:
    """Rewrite the token file the way the kubelet does: a new file swapped in atomically."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(token)
    os.replace(tmp, path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rewritten_token_file_is_picked_up_by_the_next_request(tmp_path: Path) -> None:
    """The kubelet writes the new token while the old one is still valid: no 401 needed, the next
    request after the recheck interval carries the new token, for the API client and the prober."""
    token = tmp_path / "token"
    token.write_text("tok-a\n")
    clock = Clock()

    async def main() -> FakeApiServer:
        async with api_server("tok-a") as server:
            creds = Credentials(server.url, ssl_context=False, token_file=token, recheck_s=5, clock=clock)
            kube = Kube(creds)
            async with HealthProber(timeout_s=2, proxy=creds) as prober:
                try:
                    await kube.request("GET", DISCOVERY)
                    assert (await prober.probe(ProbeTarget("ml", "p", None))).ready
                    rotate(token, "tok-b")
                    server.valid.add("tok-b")
                    clock.now += 1  # within the recheck interval: the file is not even looked at
                    assert creds.authorization() == "Bearer tok-a"
                    clock.now += 5
                    await kube.request("GET", DISCOVERY)
                    assert (await prober.probe(ProbeTarget("ml", "p", None))).ready
                finally:
                    await kube.close()
        return server

    server = asyncio.run(main())
    assert server.auths(DISCOVERY) == ["Bearer tok-a", "Bearer tok-b"]
    assert server.auths(PROXY) == ["Bearer tok-a", "Bearer tok-b"]


def test_a_401_after_rotation_recovers_with_one_retry(tmp_path: Path) -> None:
    """The old token is refused before the next look at the file: the 401 re-reads the file and the
    request is sent once more with the new token (API client and prober); a 401 whose token file did
    not change is not retried."""
    token = tmp_path / "token"
    token.write_text("tok-a")

    async def main() -> tuple[FakeApiServer, ApiError]:
        async with api_server("tok-a") as server:
            creds = Credentials(server.url, ssl_context=False, token_file=token, recheck_s=3600)
            kube = Kube(creds)
            async with HealthProber(timeout_s=2, proxy=creds) as prober:
                try:
                    await kube.request("GET", DISCOVERY)
                    rotate(token, "tok-b")
                    server.valid = {"tok-b"}  # the old token expired
                    data = await kube.request("GET", DISCOVERY)
                    assert data["kind"] == "APIGroup"
                    rotate(token, "tok-c")
                    server.valid = {"tok-c"}
                    res = await prober.probe(ProbeTarget("ml", "p", None))
                    assert res.outcome is ProbeOutcome.REPORT and res.ready, res
                    server.valid = set()  # revoked, and no new token in the file
                    with pytest.raises(ApiError) as err:
                        await kube.request("GET", DISCOVERY)
                finally:
                    await kube.close()
        return server, err.value

    server, err = asyncio.run(main())
    assert server.auths(DISCOVERY) == ["Bearer tok-a", "Bearer tok-a", "Bearer tok-b", "Bearer tok-c"]
    assert server.auths(PROXY) == ["Bearer tok-b", "Bearer tok-c"]
    assert err.status == 401


def kubeconfig(path: Path, server: str, user: dict[str, str]) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_static_token_is_not_re_read(tmp_path: Path) -> None:
    """A kubeconfig's ``token:`` is used as given: rewriting the kubeconfig changes nothing and a 401
    is not retried."""

    async def main() -> tuple[FakeApiServer, Credentials, ApiError]:
        async with api_server("tok-a") as server:
            path = kubeconfig(tmp_path / "config", server.url, {"token": "tok-a"})
            creds = load_credentials(str(path))
            kube = Kube(creds)
            try:
                await kube.request("GET", DISCOVERY)
                kubeconfig(path, server.url, {"token": "tok-b"})
                server.valid = {"tok-b"}
                with pytest.raises(ApiError) as err:
                    await kube.request("GET", DISCOVERY)
            finally:
                await kube.close()
        return server, creds, err.value

    server, creds, err = asyncio.run(main())
    assert not creds.rotating and creds.reads == 0 and not creds.reload()
    assert server.auths() == ["Bearer tok-a", "Bearer tok-a"]
    assert err.status == 401


def test_a_kubeconfig_token_file_is_followed(tmp_path: Path) -> None:
    """A kubeconfig user's ``tokenFile`` (relative to the kubeconfig) is a file like the
    ServiceAccount token: it is re-read when rewritten."""
    (tmp_path / "kube").mkdir()
    token = tmp_path / "kube" / "token"
    token.write_text("tok-a")

    async def main() -> FakeApiServer:
        async with api_server("tok-a") as server:
            path = kubeconfig(tmp_path / "kube" / "config", server.url, {"tokenFile": "token"})
            creds = load_credentials(str(path))
            assert creds.token_file == str(token)
            kube = Kube(creds)
            try:
                await kube.request("GET", DISCOVERY)
                rotate(token, "tok-b")
                server.valid = {"tok-b"}
                await kube.request("GET", DISCOVERY)
            finally:
                await kube.close()
        return server

    server = asyncio.run(main())
    assert server.auths() == ["Bearer tok-a", "Bearer tok-a", "Bearer tok-b"]


def test_in_cluster_credentials_read_the_service_account_token_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a pod (no KUBECONFIG): host from the service env, the CA file, the token from its file
    (followed, not copied)."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    token = tmp_path / "token"
    token.write_text("tok-a")
    ca = "/etc/ssl/certs/ca-certificates.crt"  # any PEM bundle will do to build the TLS context
    if not Path(ca).is_file():
        pytest.skip("no CA bundle on this machine")
    creds = load_credentials(sa_token_file=str(token), sa_ca_file=ca)
    assert creds.host == "https://10.96.0.1:443" and creds.rotating
    assert creds.authorization() == "Bearer tok-a"
    rotate(token, "tok-b")
    assert creds.reload() and creds.authorization() == "Bearer tok-b"


@pytest.mark.devcluster
def test_a_rotated_service_account_token_against_the_api_server(
    devcluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-cluster credentials (service env, CA file, token file) against the real kube-apiserver with
    real ServiceAccount tokens: the cached token's ServiceAccount is deleted (its token now 401s)
    and the file holds another one's token; the next request re-reads the file and succeeds."""
    ns = "token-rotation"
    devcluster.kubectl("create", "namespace", ns)
    core = client.CoreV1Api(devcluster.api_client())

    def token_for(sa: str) -> str:
        devcluster.kubectl("create", "serviceaccount", sa, "-n", ns)
        req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        return str(core.create_namespaced_service_account_token(sa, ns, req).status.token)

    old, new = token_for("op-old"), token_for("op-new")
    token = tmp_path / "token"
    token.write_text(old)
    server = urlsplit(devcluster.server)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", str(server.hostname))
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    creds = load_credentials(sa_token_file=str(token), sa_ca_file=str(devcluster.layout.pki / "ca.crt"))
    creds.recheck_s = 3600  # only the 401 makes it look at the file again

    async def main() -> None:
        kube = Kube(creds)
        stale = Kube(Credentials(creds.host, f"Bearer {old}", creds.ssl_context))
        try:
            await kube.request("GET", DISCOVERY)
            rotate(token, new)
            await asyncio.to_thread(core.delete_namespaced_service_account, "op-old", ns)
            deadline = asyncio.get_running_loop().time() + 30
            while True:  # the API server caches a token's authentication for a few seconds
                try:
                    await stale.request("GET", DISCOVERY)
                except ApiError as exc:
                    if exc.status == 401:
                        break
                    raise
                assert asyncio.get_running_loop().time() < deadline, "the old token was never refused"
                await asyncio.sleep(0.5)
            assert creds.authorization() == f"Bearer {old}"  # still cached: the next request gets a 401
            data = await kube.request("GET", DISCOVERY)
            assert any(v.get("groupVersion") == "policy/v1beta1" for v in data["versions"])
            assert creds.authorization() == f"Bearer {new}" and creds.reads == 2
        finally:
            await kube.close()
            await stale.close()

    try:
        asyncio.run(main())
    finally:
        devcluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
