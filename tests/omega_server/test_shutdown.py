"""SIGTERM lets a stream in flight finish (up to SHUTDOWN_TIMEOUT) and refuses new connections;
past SHUTDOWN_TIMEOUT the stream is cut. The real entry point (`python -m omega_server`)."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

import httpx
import pytest

from tests.omega_server.live import ProcessServer, image_message, sse_events, tiny

LONG_TOKENS = 900  # the tiny model's greedy answer never reaches EOS (test_api.long_body)
#: A stream that cannot finish inside SHUTDOWN_TIMEOUT=1 however fast the CPU (900 tokens of the tiny
#: model took under 1.5 s on an idle machine: the cut test raced the generation)
CUT_TOKENS = 20000


def _body(max_tokens: int = LONG_TOKENS) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [image_message()],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }


def _stream_through_sigterm(
    server: ProcessServer, max_tokens: int = LONG_TOKENS
) -> tuple[list[Any], bool, float]:
    """Start a stream, SIGTERM the server after its first chunk, read the rest.

    Returns (the stream's events, whether a new connection got through after SIGTERM, seconds
    from SIGTERM to the end of the stream)."""
    lines: list[str] = []
    with (
        httpx.Client(base_url=server.url, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json=_body(max_tokens)) as r,
    ):
        assert r.status_code == 200
        it = r.iter_lines()
        while not lines or not lines[-1].startswith("data: "):
            lines.append(next(it))
        server.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(0.5)
        try:
            httpx.get(f"{server.url}/health", timeout=2)
            accepted = True
        except httpx.HTTPError:
            accepted = False
        with contextlib.suppress(httpx.HTTPError):  # a cut stream
            lines.extend(it)
        return sse_events(iter(lines)), accepted, time.monotonic() - sent


def test_a_stream_in_flight_finishes_after_sigterm(request: pytest.FixtureRequest) -> None:
    server = ProcessServer(
        {"MODEL_PATH": str(tiny(request)), "SERVED_MODEL_NAME": "tiny", "SHUTDOWN_TIMEOUT": "120"}
    )
    try:
        server.wait_ready()
        events, accepted, _ = _stream_through_sigterm(server)
        assert events[-1] == "[DONE]", events[-3:]
        tokens = [e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]
        assert len(tokens) > 1
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert not accepted, "a new connection was accepted after SIGTERM"
        assert server.proc.wait(30) == 0
    finally:
        server.stop()


def test_shutdown_timeout_cuts_a_longer_stream(request: pytest.FixtureRequest) -> None:
    server = ProcessServer(
        {
            "MODEL_PATH": str(tiny(request)),
            "SERVED_MODEL_NAME": "tiny",
            "SHUTDOWN_TIMEOUT": "1",
            "MAX_MODEL_LENGTH": "32768",
        }
    )
    try:
        server.wait_ready()
        events, _, took = _stream_through_sigterm(server, CUT_TOKENS)
        assert "[DONE]" not in events
        assert took < 15
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
