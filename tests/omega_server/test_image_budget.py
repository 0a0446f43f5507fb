"""Images over the pixel budget are downscaled (aspect ratio kept), `detail: low` takes a small budget."""

from __future__ import annotations

import io

import httpx
import pytest
from omega_server.images import ImageLimits, decode_image, fit_pixels
from PIL import Image

from tests.omega_server.live import SHARED_ENV, data_url, png_bytes

pytestmark = pytest.mark.timeout(300)

LIMITS = ImageLimits(max_bytes=1 << 24, max_pixels=1280 * 28 * 28, fetch_timeout=1.0)


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def test_fit_pixels_keeps_the_aspect_ratio_within_the_budget() -> None:
    assert fit_pixels(640, 480, 1_000_000) == (640, 480)
    w, h = fit_pixels(4032, 3024, 1280 * 28 * 28)  # a 12 MP phone photo
    assert w * h <= 1280 * 28 * 28 and abs(w / h - 4032 / 3024) < 0.01
    assert w * h > 0.99 * 1280 * 28 * 28
    assert fit_pixels(100_000, 1, 1000) == (1000, 1)


def test_a_12_mp_photo_is_downscaled_not_refused() -> None:
    image = decode_image(jpeg_bytes((4032, 3024)), LIMITS, "p")
    w, h = image.size
    assert w * h <= LIMITS.max_pixels and abs(w / h - 4 / 3) < 0.01 and image.mode == "RGB"


def test_detail_low_uses_a_small_budget() -> None:
    raw = png_bytes((1000, 750))
    high = decode_image(raw, LIMITS, "p", "high")
    low = decode_image(raw, LIMITS, "p", "low")
    assert high.size == (1000, 750)  # within the budget: untouched
    assert low.size[0] * low.size[1] <= 512 * 512 and abs(low.size[0] / low.size[1] - 4 / 3) < 0.01


def chat(client: httpx.Client, size: tuple[int, int], detail: str | None = None) -> httpx.Response:
    image_url: dict[str, str] = {"url": data_url(png_bytes(size))}
    if detail is not None:
        image_url["detail"] = detail
    content = [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": image_url}]
    return client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], "max_tokens": 1}
    )


def test_a_photo_over_the_budget_is_answered_with_the_budgets_tokens(client: httpx.Client) -> None:
    """The shared server's budget is 512x512: a 2000x2000 image costs what a 512x512 one does."""
    assert int(SHARED_ENV["MAX_IMAGE_PIXELS"]) == 512 * 512
    big = chat(client, (2000, 2000))
    assert big.status_code == 200, big.text  # today: a 400 "image_too_large"
    fitting = chat(client, (512, 512))
    assert big.json()["usage"]["prompt_tokens"] == fitting.json()["usage"]["prompt_tokens"]
    low = chat(client, (512, 512), "low")
    assert (
        low.status_code == 200
        and low.json()["usage"]["prompt_tokens"] <= big.json()["usage"]["prompt_tokens"]
    )
