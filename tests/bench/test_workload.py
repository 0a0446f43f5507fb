"""Workload construction: exact prompt lengths with an image, deterministic images, request bodies."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from bench.vlmbench import shapes
from bench.vlmbench.client import apply_chunk, parse_sse_line
from bench.vlmbench.stats import RequestTiming
from bench.vlmbench.workload import (
    Workload,
    filler_text,
    fit_text_chars,
    image_data_url,
    noise_image,
    openai_body,
)


def test_noise_images_are_deterministic_and_distinct() -> None:
    a, b, c = noise_image(32, 1), noise_image(32, 1), noise_image(32, 2)
    assert a.size == (32, 32) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes() != c.tobytes()
    url = image_data_url(a)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.convert("RGB").tobytes() == a.tobytes()


def test_filler_text_has_the_length_asked() -> None:
    assert filler_text(0) == ""
    assert len(filler_text(1000)) == 1000
    assert filler_text(10).isascii()


def test_fit_text_chars_solves_for_the_target() -> None:
    assert fit_text_chars(lambda chars: 100 + chars, 512) == 412
    # a tokenizer with two characters per token: the correction loop still lands on the target
    assert fit_text_chars(lambda chars: 100 + (chars + 1) // 2, 512) in (823, 824)
    with pytest.raises(ValueError, match="the image alone take 600 tokens"):
        fit_text_chars(lambda chars: 600 + chars, 512)


def test_real_processor_prompt_is_exactly_512_tokens_with_a_448_image() -> None:
    """Qwen2.5-VL at its real image settings: 448x448 -> 256 image tokens; the prompt fits to 512 exactly."""
    shape = shapes.get_shape("qwen2_5_vl_7b")
    processor = shapes.build_processor(shape, shapes.build_tokenizer(shape.vocab_size))
    image = noise_image(448, 0)

    def count(chars: int) -> int:
        chat = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": filler_text(chars)}]}
        ]
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return int(processor(text=[text], images=[image], return_tensors="pt")["input_ids"].shape[1])

    chars = fit_text_chars(count, 512)
    assert count(chars) == 512
    assert count(0) - 256 < 40  # template overhead; the rest is the image's 16x16 merged patches


def test_openai_body_and_sse_parsing() -> None:
    body = openai_body("m", "data:image/png;base64,AAAA", "hi", Workload(output_tokens=7))
    assert body["max_tokens"] == 7 and body["stream"] is True and body["temperature"] == 0.0
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0]["content"][0]["type"] == "image_url"
    assert parse_sse_line("data: [DONE]") is None
    assert parse_sse_line(": keep-alive") is None
    t = RequestTiming(submitted=0.0)
    apply_chunk(
        t, parse_sse_line('data: {"choices":[{"delta":{"role":"assistant","content":""}}]}') or {}, 0.1
    )
    apply_chunk(t, {"choices": [{"delta": {"content": "ab"}, "finish_reason": None}]}, 0.2)
    apply_chunk(t, {"choices": [{"delta": {"content": "c"}, "finish_reason": "length"}]}, 0.3)
    apply_chunk(t, {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}, 0.4)
    assert t.events == [(0.2, 1), (0.3, 1)] and t.finish_reason == "length"
    assert (t.prompt_tokens, t.tokens) == (9, 2)
