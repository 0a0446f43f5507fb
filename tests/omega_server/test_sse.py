"""The SSE frames of a streamed completion (omega_server.sse), byte for byte: what OpenAI clients parse."""

from __future__ import annotations

import json

import pytest
from omega_server import sse
from omega_server.errors import APIError


def expected(frames: sse.ChunkFrames, choices: list[dict[str, object]], **extra: object) -> str:
    """The frame as the server wrote it by hand before the chunk models were used (compact JSON, no escapes
    of non-ASCII text)."""
    body = {"id": frames.id, "object": "chat.completion.chunk", "created": frames.created, "model": "m"}
    body.update(choices=choices, **extra)
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


def choice(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


@pytest.mark.parametrize("include_usage", [False, True])
def test_chunk_frames_are_the_wire_format(include_usage: bool) -> None:
    frames = sse.ChunkFrames("m", include_usage)
    usage = {"usage": None} if include_usage else {}
    assert frames.id.startswith("chatcmpl-") and frames.created > 0
    assert frames.role() == expected(frames, [choice({"role": "assistant", "content": ""})], **usage)
    text = 'héllo "wörld"\n\t\x01 € 🙂 \\ </script>'
    assert frames.content(text) == expected(frames, [choice({"content": text})], **usage)
    assert frames.finish("length") == expected(frames, [choice({}, "length")], **usage)
    counts = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert frames.usage(7, 3) == expected(frames, [], usage=counts)
    raw = frames.content("x")
    assert raw.startswith('data: {"id":"chatcmpl-') and raw.endswith("}\n\n") and "\n" not in raw[:-2]


def test_error_frame_and_done() -> None:
    err = APIError(503, "the engine is not running: ünknown", code="engine_dead")
    body = {
        "error": {
            "message": "the engine is not running: ünknown",
            "type": "service_unavailable_error",
            "param": None,
            "code": "engine_dead",
        }
    }
    assert sse.error_frame(err) == f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"
    assert sse.DONE == "data: [DONE]\n\n"
