"""Pure pieces of the HTTP layer: engine-error mapping, request parsing, message conversion, images."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from omega_server.chat_request import parse_request, sampling_params, to_engine_messages
from omega_server.engine import (
    EngineDeadError,
    EngineError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
)
from omega_server.errors import APIError, from_engine_error
from omega_server.images import ImageLimits, decode_image, parse_data_url

from tests.omega_server.live import data_url, png_bytes

LIMITS = ImageLimits(max_bytes=10_000, max_pixels=100 * 100, fetch_timeout=1.0)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (InvalidRequestError("bad", param="messages"), 400, "invalid_request"),
        (PromptTooLongError("too long"), 400, "context_length_exceeded"),
        (QueueFullError("busy", retry_after=2.5), 429, "queue_full"),
        (EngineDeadError("dead"), 503, "engine_dead"),
        (EngineError("generation failed: boom", code="generation_failed"), 500, "generation_failed"),
    ],
)
def test_engine_errors_map_to_http(exc: EngineError, status: int, code: str) -> None:
    err = from_engine_error(exc)
    assert (err.status, err.code) == (status, code)
    assert err.message == exc.message
    if status == 429:
        assert err.headers == {"Retry-After": "3"}


def test_parse_request_defaults_and_aliases() -> None:
    req = parse_request(
        b'{"messages": [{"role": "developer", "content": "be brief"}], "max_completion_tokens": 7}'
    )
    params = sampling_params(req, default_max_tokens=16)
    assert (params.max_tokens, params.temperature, params.top_p, params.stop, params.seed) == (
        7,
        1.0,
        1.0,
        (),
        None,
    )
    req = parse_request(b'{"messages": [{"role": "user", "content": "x"}], "stop": "END", "temperature": 0}')
    params = sampling_params(req, default_max_tokens=16)
    assert (params.max_tokens, params.stop, params.temperature) == (16, ("END",), 0.0)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "required"),
        (b"{", "Malformed JSON"),
        (b"null", "JSON object"),
        (b'{"messages": [{"role": "user", "content": [{"type": "video_url"}]}]}', "'video_url'"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": "maybe"}}',
            "include_usage",
        ),
    ],
)
def test_parse_request_errors(raw: bytes, words: str) -> None:
    with pytest.raises(APIError) as exc:
        parse_request(raw)
    assert exc.value.status == 400 and words in exc.value.message


def test_messages_become_hf_chat_format() -> None:
    req = parse_request(
        b'{"messages": [{"role": "developer", "content": "sys"}, {"role": "user", "content": ['
        b'{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u1"}}, {"type": "text", "text": ""}]}]}'
    )
    seen: list[tuple[str, str, str | None]] = []

    async def load(url: str, param: str, detail: str | None) -> Any:
        seen.append((url, param, detail))
        return f"image:{url}"

    out = asyncio.run(to_engine_messages(req.messages, load))
    assert out == [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "look"}, {"type": "image", "image": "image:u1"}],
        },
    ]
    assert seen == [("u1", "messages.1.content.1.image_url.url", None)]


def test_data_urls_and_decoding() -> None:
    raw = png_bytes((20, 10))
    assert parse_data_url(data_url(raw), LIMITS, "p") == raw
    assert parse_data_url(data_url(raw, "image/PNG").replace(";base64", "; base64"), LIMITS, "p") == raw
    image = decode_image(png_bytes((20, 10), fmt="WEBP"), LIMITS, "p")
    assert image.size == (20, 10) and image.mode == "RGB"
    assert decode_image(png_bytes((5, 5), fmt="JPEG"), LIMITS, "p").mode == "RGB"
    for url, words in [
        ("data:image/png,abcd", "base64-encoded"),
        ("data:image/png;base64", "Malformed data URL"),
        ("data:image/png;base64,", "empty"),
        (data_url(b"x" * 20_000), "too large"),
    ]:
        with pytest.raises(APIError) as exc:
            parse_data_url(url, LIMITS, "p")
        assert words in exc.value.message and exc.value.param == "p"
    assert decode_image(png_bytes((200, 200)), LIMITS, "p").size == (100, 100)  # downscaled to the budget
    with pytest.raises(APIError, match="pixels"):
        decode_image(png_bytes((200, 200)), dataclasses.replace(LIMITS, max_decode_pixels=150 * 150), "p")
    with pytest.raises(APIError, match=r"Could not decode|not a valid"):
        decode_image(png_bytes((50, 50))[:60], LIMITS, "p")  # truncated PNG
