"""The benchmark request: a prompt of exactly N tokens that includes one image, and M output tokens.

No torch here (the HTTP client imports this module). Images are deterministic RGB noise (noise, not
a flat colour, so PNG/JPEG sizes and decode costs are those of a real photo-sized image); each
request gets its own image (seed = request index), so nothing can be cached across requests.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FILLER = (
    "Describe the picture in detail: the objects, their colours and positions, any text, and what "
    "is happening. Then list three questions a viewer might ask about it and answer each briefly. "
)


@dataclass(frozen=True)
class Workload:
    """Issue 7's workload: 512 prompt tokens including one 448x448 image, 512 output tokens, greedy."""

    prompt_tokens: int = 512
    output_tokens: int = 512
    image_size: int = 448
    temperature: float = 0.0


def noise_image(size: int, seed: int) -> Any:
    """A ``size`` x ``size`` RGB image of deterministic noise."""
    from PIL import Image

    data = random.Random(seed).randbytes(size * size * 3)
    return Image.frombytes("RGB", (size, size), data)


def image_data_url(image: Any, fmt: str = "PNG") -> str:
    """The image as a ``data:`` URL (what an OpenAI client sends)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    mime = "image/png" if fmt.upper() == "PNG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def filler_text(chars: int) -> str:
    """``chars`` characters of plain English text (the byte-level tokenizer makes one token per byte)."""
    if chars <= 0:
        return ""
    repeats = chars // len(FILLER) + 1
    return (FILLER * repeats)[:chars]


def fit_text_chars(count_tokens: Callable[[int], int], target: int, max_steps: int = 8) -> int:
    """Filler length whose prompt has exactly ``target`` tokens, given ``count_tokens(chars)``.

    The overhead (template + image tokens) comes from ``count_tokens(0)``; then a few corrections cover
    tokenizers that are not one token per character. Raises ValueError when the target cannot be met.
    """
    overhead = count_tokens(0)
    if overhead > target:
        raise ValueError(
            f"the chat template and the image alone take {overhead} tokens, more than the {target} asked for"
        )
    chars = target - overhead
    for _ in range(max_steps):
        got = count_tokens(chars)
        if got == target:
            return chars
        if chars > 0 and got > overhead and abs(target - got) > 1:
            # scale by the observed characters per token, then step by the remainder
            chars = max(0, round(chars * (target - overhead) / (got - overhead)))
        else:
            chars = max(0, chars + (target - got))
    raise ValueError(f"could not fit the prompt to exactly {target} tokens (last try: {chars} chars)")


def engine_messages(image: Any, text: str) -> list[dict[str, Any]]:
    """The chat in the engine's form (PIL image part first, then the text)."""
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def openai_messages(data_url: str, text: str) -> list[dict[str, Any]]:
    """The same chat as an OpenAI ``messages`` list."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url}},
                {"type": "text", "text": text},
            ],
        }
    ]


def openai_body(model: str, data_url: str, text: str, workload: Workload) -> dict[str, Any]:
    """A streaming chat-completion request body with usage in the last chunk."""
    return {
        "model": model,
        "messages": openai_messages(data_url, text),
        "max_tokens": workload.output_tokens,
        "temperature": workload.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
