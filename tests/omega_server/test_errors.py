"""Bad input over real HTTP: every case gets a 4xx with the OpenAI error body and a clear message,
and the server stays healthy and keeps answering (shared tiny server, real engine)."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.omega_server.live import (
    AUTH,
    SHARED_ENV,
    ThreadServer,
    data_url,
    image_message,
    noise_png,
    png_bytes,
)

MAX_IMAGE_BYTES = int(SHARED_ENV["MAX_IMAGE_BYTES"])
MAX_MODEL_LENGTH = int(SHARED_ENV["MAX_MODEL_LENGTH"])


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def img(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


TEXT = {"type": "text", "text": "What is this?"}
BIG = noise_png((160, 160))  # about 77 KB: over the shared server's 64 KiB limit
assert len(BIG) > MAX_IMAGE_BYTES

# (case id, request body, expected status, words the message must contain, expected param)
CASES: list[tuple[str, Any, int, tuple[str, ...], str | None]] = [
    ("malformed-json", b'{"messages": [', 400, ("Malformed JSON",), None),
    ("not-an-object", b"[1, 2]", 400, ("JSON object",), None),
    (
        "deeply-nested-json",
        b"[" * 100_000 + b"]" * 100_000,
        400,
        ("Malformed JSON", "nested too deeply"),
        None,
    ),
    ("not-utf8", b'{"messages": "\xff\xfe"}', 400, ("Malformed JSON",), None),
    (
        "nan-temperature",
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        400,
        ("finite",),
        "temperature",
    ),
    ("empty-body", b"", 400, ("body",), None),
    ("no-messages-field", {"model": "tiny-vlm"}, 400, ("messages", "Field required"), "messages"),
    ("no-messages", {"messages": []}, 400, ("at least one message",), "messages"),
    ("unknown-role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, ("role",), "messages.0.role"),
    (
        "empty-content",
        {"messages": [{"role": "user", "content": ""}]},
        400,
        ("must not be empty",),
        "messages.0.content",
    ),
    (
        "empty-parts",
        {"messages": [{"role": "user", "content": []}]},
        400,
        ("must not be empty",),
        "messages.0.content",
    ),
    (
        "null-content",
        {"messages": [{"role": "user", "content": None}]},
        400,
        ("must not be empty",),
        "messages.0.content",
    ),
    (
        "bad-base64",
        {"messages": user(TEXT, img("data:image/png;base64,!!!not-base64!!!"))},
        400,
        ("base64",),
        "messages.0.content.1.image_url.url",
    ),
    (
        "not-an-image",
        {"messages": user(TEXT, img(data_url(b"these bytes are not a picture at all")))},
        400,
        ("not a valid PNG, JPEG or WebP",),
        "messages.0.content.1.image_url.url",
    ),
    (
        "unsupported-image-format",
        {"messages": user(TEXT, img(data_url(png_bytes(fmt="GIF"), "image/png")))},
        400,
        ("Unsupported image format",),
        "messages.0.content.1.image_url.url",
    ),
    (
        "unsupported-media-type",
        {"messages": user(TEXT, img(data_url(png_bytes(), "image/svg+xml")))},
        400,
        ("media type",),
        "messages.0.content.1.image_url.url",
    ),
    (
        "image-over-size-limit",
        {"messages": user(TEXT, img(data_url(BIG)))},
        400,
        ("too large", "limit"),
        "messages.0.content.1.image_url.url",
    ),
    (
        "too-many-images",
        {"messages": user(TEXT, *(img(data_url(png_bytes())) for _ in range(3)))},
        400,
        ("Too many images", "3", "2"),
        "messages",
    ),
    (
        "unsupported-part-type",
        {"messages": user(TEXT, {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}})},
        400,
        ("Unsupported content part type", "input_audio"),
        "messages.0.content.1",
    ),
    ("part-without-type", {"messages": user({"text": "hi"})}, 400, ("no 'type'",), "messages.0.content.0"),
    ("bad-url-scheme", {"messages": user(TEXT, img("ftp://example/x.png"))}, 400, ("data:",), None),
    (
        "image-in-system",
        {"messages": [{"role": "system", "content": [img(data_url(png_bytes()))]}]},
        400,
        ("user",),
        None,
    ),
    (
        "negative-max-tokens",
        {"messages": user(TEXT), "max_tokens": -5},
        400,
        ("max_tokens", "greater than"),
        "max_tokens",
    ),
    ("zero-max-tokens", {"messages": user(TEXT), "max_tokens": 0}, 400, ("max_tokens",), "max_tokens"),
    (
        "huge-max-tokens",
        {"messages": user(TEXT), "max_tokens": 10**12},
        400,
        ("max_tokens", str(10**12), str(MAX_MODEL_LENGTH)),
        "max_tokens",
    ),
    (
        "huge-max-completion-tokens",
        {"messages": user(TEXT), "max_completion_tokens": 10**6},
        400,
        ("max_completion_tokens", str(MAX_MODEL_LENGTH)),
        "max_completion_tokens",
    ),
    (
        "string-max-tokens",
        {"messages": user(TEXT), "max_tokens": "many"},
        400,
        ("max_tokens", "integer"),
        "max_tokens",
    ),
    ("temperature-high", {"messages": user(TEXT), "temperature": 3.5}, 400, ("temperature",), "temperature"),
    (
        "temperature-negative",
        {"messages": user(TEXT), "temperature": -1},
        400,
        ("temperature",),
        "temperature",
    ),
    ("top-p-zero", {"messages": user(TEXT), "top_p": 0}, 400, ("top_p",), "top_p"),
    ("top-p-high", {"messages": user(TEXT), "top_p": 1.5}, 400, ("top_p",), "top_p"),
    (
        "text-far-too-long",
        {"messages": [{"role": "user", "content": "a" * (MAX_MODEL_LENGTH * 32 + 1)}]},
        400,
        ("characters", str(MAX_MODEL_LENGTH)),
        "messages",
    ),
    ("seed-out-of-range", {"messages": user(TEXT), "seed": 10**30}, 400, ("seed",), "seed"),
    ("empty-stop", {"messages": user(TEXT), "stop": [""]}, 400, ("Stop sequences",), "stop"),
    ("unknown-model", {"model": "gpt-4o", "messages": user(TEXT)}, 404, ("gpt-4o", "tiny-vlm"), "model"),
    ("n-over-the-batch", {"messages": user(TEXT), "n": 3}, 400, ("n=3", "MAX_BATCH_SIZE"), "n"),
    ("tools", {"messages": user(TEXT), "tools": [{"type": "function"}]}, 400, ("Tool",), "tools"),
    # known fields the server cannot honour are refused by name, never dropped
    ("best-of", {"messages": user(TEXT), "best_of": 2}, 400, ("best_of",), "best_of"),
    ("guided-json", {"messages": user(TEXT), "guided_json": {}}, 400, ("guided_json",), "guided_json"),
    ("min-tokens", {"messages": user(TEXT), "min_tokens": 4}, 400, ("min_tokens",), "min_tokens"),
    ("audio-out", {"messages": user(TEXT), "modalities": ["audio"]}, 400, ("modalities",), "modalities"),
    ("top-k-bad", {"messages": user(TEXT), "top_k": -2}, 400, ("top_k",), "top_k"),
    ("min-p-high", {"messages": user(TEXT), "min_p": 1.5}, 400, ("min_p",), "min_p"),
    (
        "repetition-penalty-zero",
        {"messages": user(TEXT), "repetition_penalty": 0},
        400,
        ("repetition_penalty",),
        "repetition_penalty",
    ),
    ("logit-bias-key", {"messages": user(TEXT), "logit_bias": {"a": 1}}, 400, ("token ids",), "logit_bias"),
    (
        "logit-bias-value",
        {"messages": user(TEXT), "logit_bias": {"1": 101}},
        400,
        ("[-100, 100]",),
        "logit_bias",
    ),
    (
        "logit-bias-outside-vocab",
        {"messages": user(TEXT), "logit_bias": {"99999999": 5}},
        400,
        ("vocabulary",),
        "logit_bias",
    ),
    (
        "stop-token-outside-vocab",
        {"messages": user(TEXT), "stop_token_ids": [99999999]},
        400,
        ("vocabulary",),
        "stop_token_ids",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "words", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_clear_4xx(
    client: httpx.Client, body: Any, status: int, words: tuple[str, ...], param: str | None
) -> None:
    if isinstance(body, bytes):
        r = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] in ("invalid_request_error", "not_found_error")
    for word in words:
        assert word in error["message"], (word, error["message"])
    if param is not None:
        assert error["param"] == param, error
    assert client.get("/health").json()["ready"] is True


def test_framework_errors_use_the_openai_body(client: httpx.Client) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.delete("/v1/chat/completions")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]["message"]


def test_oversized_body_is_refused_before_reading_it(server: ThreadServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"{next(iter(AUTH))}: {AUTH['Authorization']}\r\nContent-Length: {10**10}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        )
        while len(body) < length:
            body += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413")
    assert "MAX_REQUEST_BYTES" in json.loads(body)["error"]["message"]


def test_server_still_serves_after_bad_input(client: httpx.Client, server: ThreadServer) -> None:
    assert server.engine.alive
    r = client.post("/v1/chat/completions", json={"messages": [image_message()], "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'omega_server_requests_total{status="400"}' in metrics
    assert 'omega_server_requests_total{status="500"}' not in metrics


# --------------------------------------------------------------------------- image URLs


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes, float]] = {}

    def do_GET(self) -> None:
        status, body, delay = self.routes.get(self.path, (404, b"missing", 0.0))
        time.sleep(delay)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    _ImageHandler.routes = {
        "/red.png": (200, png_bytes((40, 30)), 0.0),
        "/big.png": (200, BIG, 0.0),
        "/text.png": (200, b"<html>not an image</html>", 0.0),
        "/slow.png": (200, png_bytes(), 3.0),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_image_url_is_fetched(client: httpx.Client, image_host: str) -> None:
    r = client.post(
        "/v1/chat/completions", json={"messages": user(TEXT, img(f"{image_host}/red.png")), "max_tokens": 2}
    )
    assert r.status_code == 200, r.text
    # Same picture as a data: URL gives the same prompt length.
    inline = base64.b64encode(png_bytes((40, 30))).decode()
    r2 = client.post(
        "/v1/chat/completions",
        json={"messages": user(TEXT, img(f"data:image/png;base64,{inline}")), "max_tokens": 2},
    )
    assert r.json()["usage"]["prompt_tokens"] == r2.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/missing.png", ("HTTP 404",)),
        ("/big.png", ("too large",)),
        ("/text.png", ("not a valid",)),
        ("/slow.png", ("Timed out", "1.5 s")),
    ],
)
def test_bad_image_urls(client: httpx.Client, image_host: str, path: str, words: tuple[str, ...]) -> None:
    r = client.post(
        "/v1/chat/completions", json={"messages": user(TEXT, img(f"{image_host}{path}")), "max_tokens": 2}
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    for word in words:
        assert word in error["message"]
    assert error["param"] == "messages.0.content.1.image_url.url"
    assert client.get("/health").status_code == 200
