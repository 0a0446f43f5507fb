"""Image URLs may not reach private networks (SSRF): the address policy as a pure function, the
fetcher's redirect hops over real HTTP, and the real server's 400 by default / fetch when allowed."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from omega_server.errors import APIError
from omega_server.image_addresses import check_addresses, refused_address, resolve
from omega_server.images import MAX_REDIRECTS, ImageFetcher, ImageLimits
from omega_server.settings import load_settings

from tests.omega_server.live import AUTH, SHARED_ENV, ThreadServer, png_bytes, tiny

PARAM = "messages.0.content.1.image_url.url"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.5.6.7", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),  # ULA
        ("fec0::1", "private"),  # site-local
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("224.0.1.1", "multicast"),
        ("ff0e::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "non-public"),  # shared address space (carrier NAT)
        ("192.0.2.1", "private"),  # documentation
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
    ],
)
def test_address_policy(address: str, kind: str | None) -> None:
    assert refused_address(address) == kind


def test_every_resolved_address_is_checked() -> None:
    check_addresses("img.example", ["93.184.216.34", "2606:4700::1111"], "p")  # all public: passes
    with pytest.raises(APIError) as info:
        check_addresses("img.example", ["93.184.216.34", "10.0.0.5"], "p")
    err = info.value
    assert (err.status, err.param, err.code) == (400, "p", "invalid_image_url")
    assert "'img.example'" in err.message and "private" in err.message and "10.0.0.5" in err.message
    assert "ALLOW_PRIVATE_IMAGE_URLS" in err.message


def test_setting_defaults_to_refusing() -> None:
    assert load_settings({"MODEL_PATH": "m"}).allow_private_image_urls is False
    assert load_settings({"MODEL_PATH": "m", "ALLOW_PRIVATE_IMAGE_URLS": "true"}).allow_private_image_urls


# --------------------------------------------------------------------------- a real image host


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    seen: list[tuple[str, str]] = []  # (path, Host header) of every request

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        status, headers, body = self.routes.get(self.path, (404, {}, b"missing"))
        self.send_response(status)
        for name, value in {"Content-Type": "image/png", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_address[1]
    _Handler.routes = {
        "/red.png": (200, {}, png_bytes((40, 30))),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/to-other-loopback": (301, {"Location": f"http://127.0.0.2:{port}/red.png"}, b""),
        "/to-private-v6": (307, {"Location": f"http://[::ffff:10.0.0.1]:{port}/red.png"}, b""),
        "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
        "/to-red": (302, {"Location": "/red.png"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
    }
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    httpd.server_close()


LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20, fetch_timeout=5.0)


def only_this_host_public(address: str) -> str | None:
    """The real policy, except that 127.0.0.1 (the test's image host) counts as public."""
    return None if address == "127.0.0.1" else refused_address(address)


def fetch(url: str, limits: ImageLimits = LIMITS) -> Any:
    async def go() -> Any:
        fetcher = ImageFetcher(limits, refuse=only_this_host_public)
        try:
            return await fetcher.load(url, "p")
        except APIError as exc:
            return exc
        finally:
            await fetcher.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/to-metadata", ("'169.254.169.254'", "link-local")),
        ("/to-other-loopback", ("'127.0.0.2'", "loopback")),
        ("/to-private-v6", ("::ffff:10.0.0.1", "private")),
    ],
)
def test_redirect_to_a_private_address_is_refused(image_host: str, path: str, words: tuple[str, ...]) -> None:
    _Handler.seen.clear()
    err = fetch(f"{image_host}{path}")
    assert isinstance(err, APIError), err
    assert (err.status, err.param, err.code) == (400, "p", "invalid_image_url")
    for word in words:
        assert word in err.message, err.message
    assert [p for p, _ in _Handler.seen] == [path]  # the redirect target was never asked


def test_redirects_are_followed_and_bounded(image_host: str) -> None:
    _Handler.seen.clear()
    image = fetch(f"{image_host}/to-red")
    assert not isinstance(image, APIError), image
    assert image.size == (40, 30)
    assert _Handler.seen == [("/to-red", image_host[7:]), ("/red.png", image_host[7:])]
    err = fetch(f"{image_host}/loop")
    assert isinstance(err, APIError) and f"more than {MAX_REDIRECTS} redirects" in err.message
    err = fetch(f"{image_host}/to-file")
    assert isinstance(err, APIError) and err.code == "invalid_image_url", err


def test_fetch_goes_to_a_checked_address_with_the_urls_host(image_host: str) -> None:
    """A name is fetched at one of the addresses that were checked, with its own Host header."""
    port = image_host.rsplit(":", 1)[1]
    addresses = asyncio.run(resolve("localhost", int(port)))
    assert "127.0.0.1" in addresses
    _Handler.seen.clear()

    async def go() -> Any:
        fetcher = ImageFetcher(LIMITS, refuse=lambda a: None if a in addresses else "private")
        try:
            return await fetcher.load(f"http://localhost:{port}/red.png", "p")
        finally:
            await fetcher.aclose()

    assert asyncio.run(go()).size == (40, 30)
    assert _Handler.seen == [("/red.png", f"localhost:{port}")]


def test_private_allowed_skips_the_check(image_host: str) -> None:
    allowed = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20, fetch_timeout=5.0, allow_private=True)

    async def go() -> Any:
        fetcher = ImageFetcher(allowed)  # the default policy, switched off by the setting
        try:
            return await fetcher.load(f"{image_host}/red.png", "p")
        finally:
            await fetcher.aclose()

    assert asyncio.run(go()).size == (40, 30)


# --------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def default_server(request: pytest.FixtureRequest) -> Iterator[ThreadServer]:
    """A server with the default ALLOW_PRIVATE_IMAGE_URLS (the shared one sets it to true)."""
    env = {"MODEL_PATH": str(tiny(request)), **SHARED_ENV}
    del env["ALLOW_PRIVATE_IMAGE_URLS"]
    server = ThreadServer(env).start()
    assert server.settings.allow_private_image_urls is False
    yield server
    server.stop()


def chat(url: str) -> dict[str, Any]:
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"messages": [{"role": "user", "content": parts}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("where", "kind"),
    [
        ("{host}/red.png", "loopback"),
        ("http://localhost:{port}/red.png", "loopback"),
        ("http://[::1]:{port}/red.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/x.png", "private"),
        ("http://0.0.0.0:{port}/red.png", "unspecified"),
    ],
)
def test_server_refuses_private_image_urls_by_default(
    default_server: ThreadServer, image_host: str, where: str, kind: str
) -> None:
    _Handler.seen.clear()
    url = where.format(host=image_host, port=image_host.rsplit(":", 1)[1])
    with httpx.Client(base_url=default_server.url, headers=AUTH, timeout=60) as client:
        r = client.post("/v1/chat/completions", json=chat(url))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == PARAM and error["code"] == "invalid_image_url"
        assert error["type"] == "invalid_request_error"
        assert kind in error["message"] and "ALLOW_PRIVATE_IMAGE_URLS" in error["message"]
        assert _Handler.seen == []  # nothing was fetched
        assert client.get("/health").json()["ready"] is True


def test_server_fetches_private_image_urls_when_allowed(server: ThreadServer, image_host: str) -> None:
    assert server.settings.allow_private_image_urls is True  # set in SHARED_ENV
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        r = client.post("/v1/chat/completions", json=chat(f"{image_host}/to-red"))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
