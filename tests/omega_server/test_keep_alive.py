"""An idle keep-alive connection outlives a client pool's idle time (httpx keeps one 5 s).

uvicorn's default closed it after 5 s: a client that sent on it at that moment saw its request dropped
(the soak in bench/reliability saw one ReadError in 54,604 requests). HTTP_KEEP_ALIVE_SECONDS (75).
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.omega_server.live import ProcessServer, tiny

pytestmark = pytest.mark.timeout(300)


def _get_health(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head


def test_an_idle_connection_is_still_open_after_six_seconds(request: pytest.FixtureRequest) -> None:
    server = ProcessServer({"MODEL_PATH": str(tiny(request)), "ATTN_IMPL": "sdpa"})
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert _get_health(sock).startswith(b"HTTP/1.1 200")
            time.sleep(6.0)
            assert _get_health(sock).startswith(b"HTTP/1.1 200"), "the server closed the idle connection"
    finally:
        server.stop()
