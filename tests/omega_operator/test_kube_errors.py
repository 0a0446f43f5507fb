"""The operator's API client turns every failed answer into an ApiError, whatever the body."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from omega_operator.kube import ApiError, Credentials, Kube


async def _request_against(handler: web.RequestHandler) -> ApiError | dict[str, object]:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kube = Kube(Credentials(host=f"http://127.0.0.1:{port}", authorization=None, ssl_context=False))
    try:
        return await kube.request("GET", "/apis/apps/v1/namespaces/ns/deployments/x")
    except ApiError as exc:
        return exc
    finally:
        await kube.close()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "content_type", "want_status", "want_text"),
    [
        (502, "<html><body>Bad Gateway</body></html>", "text/html", 502, "Bad Gateway"),
        (200, "<html>a login page</html>", "text/html", 502, "not JSON"),
        (
            403,
            '{"kind": "Status", "message": "deployments.apps is forbidden"}',
            "application/json",
            403,
            "forbidden",
        ),
    ],
)
def test_failed_answers_become_api_errors(
    status: int, body: str, content_type: str, want_status: int, want_text: str
) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type=content_type)

    result = asyncio.run(_request_against(handler))
    assert isinstance(result, ApiError), result
    assert result.status == want_status and want_text in result.message
