"""The HTTP path before the first token (issue 7, TTFT over HTTP): what the server does and when.

- The first token's SSE content goes out as soon as the engine emits it, with the role chunk, not
  held back for the next token.
- Every chat answer says where its time went (`Server-Timing`: body, parse, images, prepare,
  first-token), and the bench client records it with the first chunk and the send time.
- A data URL is decoded once per image, base64 and image together, on a worker thread (not on the
  event loop); line-wrapped base64 still decodes.
- The bench's in-process server turns Nagle's algorithm off (TCP_NODELAY) on its connections.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from omega_server import __main__ as server_main
from omega_server import images
from omega_server.images import ImageFetcher, ImageLimits
from omega_server.listen import listen_socket
from PIL import Image

from bench.vlmbench import client as bench_client
from bench.vlmbench.stats import RequestTiming, summarize
from tests.omega_server.live import API_KEY, AUTH, SHARED_ENV, ThreadServer, data_url

STAGES = ["body", "parse", "images", "prepare", "first-token"]


def noise(size: int, seed: int = 0) -> Image.Image:
    return Image.frombytes("RGB", (size, size), random.Random(seed).randbytes(size * size * 3))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def chat_body(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": SHARED_ENV["SERVED_MODEL_NAME"],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "Describe the picture."},
                ],
            }
        ],
        "max_tokens": 6,
        "temperature": 0,
        **extra,
    }


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Spies on the two decoding steps of a data URL (both still run): (step, thread id) per call."""
    calls: list[tuple[str, int]] = []
    parse, decode = images.parse_data_url, images.decode_image

    def parse_spy(*args: Any) -> bytes:
        calls.append(("base64", threading.get_ident()))
        return parse(*args)

    def decode_spy(*args: Any) -> Image.Image:
        calls.append(("image", threading.get_ident()))
        return decode(*args)

    monkeypatch.setattr(images, "parse_data_url", parse_spy)
    monkeypatch.setattr(images, "decode_image", decode_spy)
    yield calls


def server_timing(header: str | None) -> list[tuple[str, float]]:
    """Stages in header order (the bench client's parser keeps a dict, so check order here)."""
    parsed = bench_client.parse_server_timing(header)
    names = [metric.split(";")[0].strip() for metric in (header or "").split(",")]
    return [(name, parsed[name]) for name in names]


# --------------------------------------------------------------------------- the server


def test_first_content_chunk_goes_out_with_the_first_token(
    server: ThreadServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's second output is held back until the client has the first token's chunk: a server
    that waited for more output before sending the first content would never answer."""
    engine = server.engine
    real_stream = engine.stream
    gate = threading.Event()
    emitted: list[str] = []

    async def gated_stream(prepared: Any) -> AsyncIterator[Any]:
        async for out in real_stream(prepared):
            emitted.append(out.text)
            yield out
            if len(emitted) == 1:
                await asyncio.to_thread(gate.wait, 30)

    monkeypatch.setattr(engine, "stream", gated_stream)
    body = chat_body(data_url(png(noise(64))), stream=True)
    before_gate: list[dict[str, Any]] = []
    after_gate: list[Any] = []
    try:
        with (
            httpx.Client(base_url=server.url, headers=AUTH, timeout=httpx.Timeout(20.0)) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            lines = response.iter_lines()
            for line in lines:
                if not line:
                    continue
                before_gate.append(json.loads(line.removeprefix("data: ")))
                if any(c["choices"][0]["delta"].get("content") for c in before_gate):
                    break
            gate.set()
            after_gate = [line for line in lines if line]
    finally:
        gate.set()
    assert emitted and emitted[0], "the tiny model's first greedy token decodes to text"
    assert [c["choices"][0]["delta"] for c in before_gate] == [
        {"role": "assistant", "content": ""},
        {"content": emitted[0]},
    ]
    assert after_gate[-1] == "data: [DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content", "")
        for c in before_gate + [json.loads(x.removeprefix("data: ")) for x in after_gate[:-1]]
        if c.get("choices")
    )
    assert text == "".join(emitted)


@pytest.mark.parametrize("stream", [True, False])
def test_answers_say_where_the_time_before_the_first_token_went(server: ThreadServer, stream: bool) -> None:
    body = chat_body(data_url(png(noise(64, 1))), stream=stream)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    stages = server_timing(response.headers.get("server-timing"))
    assert [name for name, _ in stages] == STAGES + ([] if stream else ["generate"])
    assert all(ms >= 0 for _, ms in stages)


def test_bad_images_still_get_openai_errors_with_the_param(server: ThreadServer) -> None:
    cases = [
        ("data:image/png;base64,!!!!", "invalid_image"),
        (data_url(b"not an image"), "invalid_image"),
        (data_url(png(noise(300))), "image_too_large"),  # over the shared server's 64 KiB
    ]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        for url, code in cases:
            response = http.post("/v1/chat/completions", json=chat_body(url, stream=True))
            assert response.status_code == 400, url[:40]
            error = response.json()["error"]
            assert error["code"] == code and error["param"] == "messages.0.content.0.image_url.url"


def test_data_url_is_decoded_once_on_a_worker_thread(
    server: ThreadServer, decode_calls: list[tuple[str, int]]
) -> None:
    body = chat_body(data_url(png(noise(64, 2))), stream=True)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert [step for step, _ in decode_calls] == ["base64", "image"]
    threads = {ident for _, ident in decode_calls}
    assert len(threads) == 1 and server.thread.ident not in threads  # one hop, off the event loop


def test_fetcher_decodes_data_urls_off_the_loop_and_keeps_the_pixels(
    decode_calls: list[tuple[str, int]],
) -> None:
    image = noise(48, 3)
    raw = png(image)
    encoded = base64.b64encode(raw).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # as `base64` prints it
    fetcher = ImageFetcher(ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20, fetch_timeout=1.0))

    async def load_all() -> tuple[int, list[Image.Image]]:
        urls = [data_url(raw), f"data:image/png;base64,{wrapped}", f"data:image/png;base64, {encoded}\r\n"]
        loaded = [await fetcher.load(url, "p") for url in urls]
        await fetcher.aclose()
        return threading.get_ident(), loaded

    loop_thread, loaded = asyncio.run(load_all())
    for out in loaded:
        assert out.mode == "RGB" and out.size == image.size and out.tobytes() == image.tobytes()
    assert [step for step, _ in decode_calls] == ["base64", "image"] * 3
    assert loop_thread not in {ident for _, ident in decode_calls}


def test_non_rgb_images_are_still_converted() -> None:
    limits = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20, fetch_timeout=1.0)
    for mode in ("RGBA", "L", "P"):
        buf = io.BytesIO()
        noise(16).convert(mode).save(buf, "PNG")
        assert images.decode_image(buf.getvalue(), limits, "p").mode == "RGB"


# --------------------------------------------------------------------------- the bench client


def test_bench_client_records_first_chunk_send_and_server_timing(server: ThreadServer) -> None:
    spec = {
        "url": server.url,
        "model": SHARED_ENV["SERVED_MODEL_NAME"],
        "concurrency": 2,
        "text_chars": 40,
        "workload": {"prompt_tokens": 0, "output_tokens": 4, "image_size": 96, "temperature": 0.0},
        "time_limit_s": 60,
        "api_key": API_KEY,
    }
    timings = asyncio.run(bench_client.run(spec))
    for t in timings:
        assert t.error is None and t.completion_tokens == 4
        assert t.sent is not None and t.first_chunk is not None and t.first is not None
        assert t.submitted < t.sent < t.first_chunk <= t.first
        assert list(t.server_timing) == STAGES
    m = summarize(timings, expected_tokens=4)
    assert m.ttft_first_chunk_p50_ms is not None and m.ttft_p50_ms is not None
    assert m.ttft_first_chunk_p50_ms <= m.ttft_p50_ms
    assert m.send_p50_ms is not None and m.send_p50_ms > 0
    assert m.server_timing_p50_ms is not None and list(m.server_timing_p50_ms) == STAGES


def test_first_chunk_and_first_content_are_two_measures() -> None:
    """A first token without text (half a UTF-8 character) sends the role chunk but no content."""
    t = RequestTiming(submitted=1.0, events=[(1.5, 1), (1.6, 1)], first_chunk=1.2, sent=1.01)
    t.server_timing = {"body": 1.0, "first-token": 150.0}
    engine = RequestTiming(submitted=1.0, events=[(1.3, 1)])  # engine driver: no chunks
    assert t.ttft() == pytest.approx(0.5) and t.ttft_first_chunk() == pytest.approx(0.2)
    assert engine.ttft_first_chunk() == engine.ttft() == pytest.approx(0.3)
    m = summarize([t, RequestTiming(submitted=1.0, events=[(1.4, 1)], first_chunk=1.4)], expected_tokens=1)
    assert m.ttft_p50_ms == pytest.approx(450.0) and m.ttft_first_chunk_p50_ms == pytest.approx(300.0)
    assert m.send_p50_ms == pytest.approx(10.0)
    assert m.server_timing_p50_ms == {"body": 1.0, "first-token": 150.0}
    assert summarize([engine], expected_tokens=1).server_timing_p50_ms is None


def test_server_timing_parser() -> None:
    assert bench_client.parse_server_timing('a;dur=1.5, b;desc="x";dur=2, c, d;dur=oops') == {
        "a": 1.5,
        "b": 2.0,
    }
    assert bench_client.parse_server_timing(None) == {}


def test_server_connections_get_tcp_nodelay() -> None:
    """asyncio (and so uvicorn) sets TCP_NODELAY only on sockets whose proto is TCP; the server's
    listener (``python -m omega_server``, the bench's and the tests' servers) is made so. A plain
    socket.socket() listener is the control: Nagle stays on."""

    async def nodelay(sock: socket.socket) -> int:
        seen: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            while not seen:
                await asyncio.sleep(0.01)
            writer.close()
        return seen[0]

    assert asyncio.run(nodelay(listen_socket())) != 0
    assert asyncio.run(nodelay(server_main._listen("127.0.0.1", 0))) != 0
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    assert asyncio.run(nodelay(plain)) == 0
