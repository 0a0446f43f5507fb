"""The PodDisruptionBudget: one pod down at a time, and `unhealthyPodEvictionPolicy: AlwaysAllow`
on API servers that take it (1.27+, found from /version)."""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes_validate
import pytest
from aiohttp import web
from omega_operator import builders as b
from omega_operator.api import parse_spec
from omega_operator.kube import ApiError, Credentials, Kube, parse_server_version

OWNER = b.Owner(name="captioner", namespace="ml", uid="1234-uid")


def test_always_allow_lets_not_ready_pods_be_evicted(example: dict[str, Any]) -> None:
    spec = parse_spec(example["spec"])
    pdb = b.pdb(spec, OWNER, "policy/v1", always_allow=True)
    assert pdb is not None
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": b.selector_labels("captioner")},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    kubernetes_validate.validate(pdb, "1.27", strict=True)
    # older API servers do not know the field (an apply carrying it would be refused)
    old = b.pdb(spec, OWNER, "policy/v1beta1")
    assert old is not None and "unhealthyPodEvictionPolicy" not in old["spec"]
    _, _, via_children = b.children(spec, OWNER, "flash", "policy/v1", pdb_always_allow=True)
    assert via_children == pdb


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"major": "1", "minor": "20", "gitVersion": "v1.20.2"}, (1, 20)),
        ({"major": "1", "minor": "27+", "gitVersion": "v1.27.16-eks-a18cd3a"}, (1, 27)),
        ({"major": "", "minor": "", "gitVersion": "v1.30.1+k3s1"}, (1, 30)),
    ],
)
def test_server_version_is_read_from_vendor_forms(body: dict[str, str], want: tuple[int, int]) -> None:
    assert parse_server_version(body) == want


def test_an_unreadable_version_is_an_api_error() -> None:
    with pytest.raises(ApiError):
        parse_server_version({"major": "x"})


async def _always_allow_against(version: dict[str, str]) -> tuple[bool, int]:
    calls = 0

    async def handler(_request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response(version)

    app = web.Application()
    app.router.add_get("/version", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kube = Kube(Credentials(host=f"http://127.0.0.1:{port}", authorization=None, ssl_context=False))
    try:
        first = await kube.pdb_always_allow()
        assert await kube.pdb_always_allow() == first  # discovered once, then cached
        return first, calls
    finally:
        await kube.close()
        await runner.cleanup()


@pytest.mark.parametrize(("minor", "want"), [("20", False), ("26", False), ("27", True), ("31", True)])
def test_always_allow_is_discovered_from_the_server_version(minor: str, want: bool) -> None:
    got, calls = asyncio.run(_always_allow_against({"major": "1", "minor": minor}))
    assert got is want and calls == 1
