"""MAX_REQUEST_BYTES holds for chunked bodies too (no Content-Length): a real uvicorn server with a
small limit, real clients (httpx sending a generator body, and a raw socket), the real tiny engine."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.omega_server.live import AUTH, SHARED_ENV, ThreadServer, tiny

LIMIT = 4096


@pytest.fixture(scope="module")
def small_server(request: pytest.FixtureRequest) -> Iterator[ThreadServer]:
    server = ThreadServer(
        {"MODEL_PATH": str(tiny(request)), **SHARED_ENV, "MAX_REQUEST_BYTES": str(LIMIT)}
    ).start()
    yield server
    server.stop()


def chat_body(size: int | None = None) -> bytes:
    """A valid chat request, padded with trailing JSON whitespace to exactly `size` bytes."""
    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    return raw if size is None else raw + b" " * (size - len(raw))


def chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] == (
        f"Request body is larger than the limit of {LIMIT} bytes (MAX_REQUEST_BYTES)."
    )


def test_chunked_body_over_the_limit_is_refused(small_server: ThreadServer) -> None:
    with httpx.Client(base_url=small_server.url, headers=AUTH, timeout=30) as client:
        r = client.post("/v1/chat/completions", content=chunks(chat_body(2 * LIMIT)))
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.request.headers
    assert_too_large(r)


def test_chunked_body_is_refused_before_it_ends(small_server: ThreadServer) -> None:
    """The 413 comes while the body is still open, and the server then closes the connection."""
    host, port = small_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        piece = b"x" * 1000
        for _ in range(LIMIT // len(piece) + 1):  # just over the limit, and no terminating 0-chunk
            s.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        data = b""
        start = time.monotonic()
        while chunk := s.recv(65536):  # until the server closes: it does not wait for the rest
            data += chunk
        assert time.monotonic() - start < 5
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data
    assert b"connection: close" in head.lower()
    assert "MAX_REQUEST_BYTES" in json.loads(body)["error"]["message"]


def test_chunked_body_at_the_limit_is_served(small_server: ThreadServer) -> None:
    with httpx.Client(base_url=small_server.url, headers=AUTH, timeout=60) as client:
        r = client.post("/v1/chat/completions", content=chunks(chat_body(LIMIT)))
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1


def test_engine_unaffected_and_statuses_counted(small_server: ThreadServer) -> None:
    with httpx.Client(base_url=small_server.url, headers=AUTH, timeout=60) as client:
        for _ in range(2):
            assert_too_large(client.post("/v1/chat/completions", content=chunks(chat_body(3 * LIMIT))))
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert client.get("/health").json()["ready"] is True
    assert small_server.engine.alive
    metrics: Any = httpx.get(f"{small_server.url}/metrics").text
    assert 'omega_server_requests_total{status="413"}' in metrics
    assert 'omega_server_requests_total{status="500"}' not in metrics
