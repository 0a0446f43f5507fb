"""Image inputs of chat requests: base64 `data:` URLs and http(s) URLs, decoded to RGB PIL images.

Limits (bytes, pixels, fetch timeout) are an `ImageLimits` (`app.http_config` makes it from the
settings). Every failure is an `APIError(400)` whose `param` points at the offending `image_url.url`.
An image over the pixel budget (`MAX_IMAGE_PIXELS`; `LOW_DETAIL_PIXELS` for `detail: low`) is
downscaled to it, keeping its aspect ratio (`fit_pixels`; JPEGs are decoded at a reduced size first);
only one over `ImageLimits.max_decode_pixels` is refused (a decompression bomb guard).

Unless `ALLOW_PRIVATE_IMAGE_URLS` is set, an http(s) URL is fetched only when every address its
host resolves to is public (`refused_address`): the request then goes to one of the addresses that
were checked (the `Host` header and TLS name stay the URL's), so a second DNS answer cannot send it
elsewhere. Redirects are followed by hand, each hop checked the same way.

A data URL is decoded in one worker-thread call (`load_data_url`: base64, then the image), so the
event loop never spends the milliseconds that an 800 KB URL takes (about 3 ms of base64 and 4 ms of
PNG for a 448x448 photo-like image).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from PIL import Image, UnidentifiedImageError

from omega_server.errors import APIError
from omega_server.image_addresses import check_addresses, refused_address, resolve

#: what `str.split()` splits on within ASCII; base64 payloads rarely hold any, and then need no copy
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"

_MEDIA_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
_FORMATS = frozenset(_MEDIA_TYPES.values())


#: ``detail: low``: OpenAI's 512x512
LOW_DETAIL_PIXELS = 512 * 512


def fit_pixels(width: int, height: int, budget: int) -> tuple[int, int]:
    """The largest size of ``width`` x ``height``'s aspect ratio with at most ``budget`` pixels."""
    if width * height <= budget:
        return width, height
    scale = math.sqrt(budget / (width * height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while w * h > budget:  # floating point: never over the budget
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


@dataclass(frozen=True)
class ImageLimits:
    """How large an image may be and how long a URL fetch may take."""

    max_bytes: int
    max_pixels: int  # the pixel budget: a larger image is downscaled to it, keeping its aspect ratio
    fetch_timeout: float
    allow_urls: bool = True
    #: fetch from hosts that resolve to loopback, private, link-local, ... addresses (SSRF guard off)
    allow_private: bool = False
    #: the budget of an image part with ``detail: low``
    low_detail_pixels: int = LOW_DETAIL_PIXELS
    #: larger images are refused, not decoded (PIL's own decompression-bomb limit is about 89 MP)
    max_decode_pixels: int = 64 * 1024 * 1024

    def budget(self, detail: str | None) -> int:
        """The pixel budget of an image part with this ``detail`` (auto, high, low or None)."""
        return min(self.max_pixels, self.low_detail_pixels) if detail == "low" else self.max_pixels


#: redirects followed for one image URL
MAX_REDIRECTS = 3


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def parse_data_url(url: str, limits: ImageLimits, param: str) -> bytes:
    """The bytes of a `data:image/<png|jpeg|webp>;base64,...` URL."""
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise APIError(400, "Malformed data URL: expected 'data:image/<type>;base64,<data>'.", param=param)
    media, *options = (p.strip().lower() for p in header.split(";"))
    if media not in _MEDIA_TYPES:
        raise APIError(
            400,
            f"Unsupported image media type {media or '(none)'!r} in data URL; use image/png, image/jpeg or image/webp.",
            param=param,
            code="invalid_image",
        )
    if "base64" not in options:
        raise APIError(400, "Image data URLs must be base64-encoded (';base64,').", param=param)
    compact = payload if _is_compact(payload) else "".join(payload.split())
    if len(compact) * 3 // 4 > limits.max_bytes + 3:
        raise APIError(
            400,
            f"Image is too large: about {_mib(len(compact) * 3 // 4)}, the limit is {_mib(limits.max_bytes)}.",
            param=param,
            code="image_too_large",
        )
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(
            400, f"Invalid base64 in image data URL: {exc}.", param=param, code="invalid_image"
        ) from None
    if len(raw) > limits.max_bytes:
        raise APIError(
            400,
            f"Image is too large: {_mib(len(raw))}, the limit is {_mib(limits.max_bytes)}.",
            param=param,
            code="image_too_large",
        )
    if not raw:
        raise APIError(400, "Image data URL is empty.", param=param, code="invalid_image")
    return raw


def _is_compact(payload: str) -> bool:
    """True when `payload` has no whitespace (a few fast scans instead of splitting 800 KB)."""
    return payload.isascii() and not any(ch in payload for ch in _ASCII_WHITESPACE)


def load_data_url(url: str, limits: ImageLimits, param: str, detail: str | None = None) -> Image.Image:
    """The RGB image of a `data:` URL: base64 decode and image decode in one (blocking) call."""
    return decode_image(parse_data_url(url, limits, param), limits, param, detail)


def decode_image(raw: bytes, limits: ImageLimits, param: str, detail: str | None = None) -> Image.Image:
    """Decode PNG/JPEG/WebP bytes to an RGB image within the pixel budget of ``detail`` (downscaled,
    aspect ratio kept), refusing other formats and images over ``max_decode_pixels``."""
    try:
        img = Image.open(io.BytesIO(raw))
        if img.format not in _FORMATS:
            raise APIError(
                400,
                f"Unsupported image format {img.format!r}; use PNG, JPEG or WebP.",
                param=param,
                code="invalid_image",
            )
        width, height = img.size
        if width * height > limits.max_decode_pixels:
            raise APIError(
                400,
                f"Image is too large: {width}x{height} pixels, the limit is {limits.max_decode_pixels} pixels.",
                param=param,
                code="image_too_large",
            )
        size = fit_pixels(width, height, limits.budget(detail))
        if size != (width, height) and img.format == "JPEG":
            img.draft("RGB", size)  # decode at 1/2, 1/4 or 1/8 scale, still at least ``size``
        img.load()
        rgb = img if img.mode == "RGB" else img.convert("RGB")  # convert() would copy an RGB image
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return rgb
    except APIError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise APIError(
            400, "The image data is not a valid PNG, JPEG or WebP image.", param=param, code="invalid_image"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files
        raise APIError(
            400, f"Could not decode the image: {exc}.", param=param, code="invalid_image"
        ) from None


class ImageFetcher:
    """Loads images from request URLs; owns one HTTP client for http(s) URLs."""

    def __init__(self, limits: ImageLimits, refuse: Callable[[str], str | None] = refused_address) -> None:
        self.limits = limits
        self.refuse = refuse  # the address policy (`refused_address`); tests may widen it
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.limits.fetch_timeout),
                follow_redirects=False,  # followed by hand, each hop checked (`fetch`)
                headers={"User-Agent": "omega-vlm-server"},
            )
        return self._client

    async def _addresses(self, url: httpx.URL, param: str) -> list[str | None]:
        """Where to send a request for `url`: the checked addresses, or [None] (no check) when allowed."""
        if url.scheme not in ("http", "https") or not url.host:
            raise APIError(
                400,
                f"Unsupported image URL (http or https with a host): {url}.",
                param=param,
                code="invalid_image_url",
            )
        if self.limits.allow_private:
            return [None]
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await resolve(url.host, port)
        except OSError as exc:
            raise APIError(
                400,
                f"Could not resolve image URL host {url.host!r}: {exc}.",
                param=param,
                code="image_fetch",
            ) from None
        check_addresses(url.host, addresses, param, self.refuse)
        return list(addresses)

    async def _open(self, url: httpx.URL, param: str) -> httpx.Response:
        """GET `url` (streamed, redirects not followed) at an address that passed the check."""
        client = self._http()
        addresses = await self._addresses(url, param)
        for i, address in enumerate(addresses):
            if address is None:
                request = client.build_request("GET", url)
            else:  # pinned: the checked address, with the URL's Host header and TLS server name
                request = client.build_request(
                    "GET",
                    url.copy_with(host=address),
                    headers={"Host": url.netloc.decode("ascii")},
                    extensions={"sni_hostname": url.host},
                )
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError:
                if i == len(addresses) - 1:
                    raise
        raise AssertionError("unreachable: resolve() returns at least one address")

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def load(self, url: str, param: str, detail: str | None = None) -> Image.Image:
        """The RGB image behind a `data:` or http(s) URL, within the pixel budget of ``detail``.
        Decoding runs in a worker thread.

        A data URL takes one worker-thread call for its base64 and its image, off the event loop.
        """
        url = url.strip()
        lowered = url[:8].lower()
        if lowered.startswith("data:"):
            return await asyncio.to_thread(load_data_url, url, self.limits, param, detail)
        if lowered.startswith(("http://", "https://")):
            if not self.limits.allow_urls:
                raise APIError(
                    400, "Image URLs are disabled on this server; send a base64 data: URL.", param=param
                )
            raw = await self.fetch(url, param)
            return await asyncio.to_thread(decode_image, raw, self.limits, param, detail)
        raise APIError(
            400,
            "image_url.url must be a base64 'data:image/...' URL or an http(s) URL.",
            param=param,
            code="invalid_image",
        )

    @asynccontextmanager
    async def _follow(self, url: str, param: str) -> AsyncIterator[httpx.Response]:
        """The response for `url` after at most `MAX_REDIRECTS` redirects, every hop checked."""
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self._open(target, param)
            try:
                if not (resp.is_redirect and "location" in resp.headers):
                    yield resp
                    return
                try:
                    target = target.join(resp.headers["location"])
                except httpx.InvalidURL as exc:
                    raise APIError(
                        400,
                        f"Image URL redirects to an invalid URL: {exc}.",
                        param=param,
                        code="invalid_image_url",
                    ) from None
            finally:
                await resp.aclose()
        raise APIError(
            400,
            f"Could not fetch image URL: more than {MAX_REDIRECTS} redirects.",
            param=param,
            code="image_fetch",
        )

    async def fetch(self, url: str, param: str) -> bytes:
        """GET an image URL within the timeout and the size limit."""
        limit = self.limits.max_bytes
        try:
            async with asyncio.timeout(self.limits.fetch_timeout):
                async with self._follow(url, param) as resp:
                    if resp.status_code != 200:
                        raise APIError(
                            400,
                            f"Could not fetch image URL: HTTP {resp.status_code}.",
                            param=param,
                            code="image_fetch",
                        )
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise APIError(
                            400,
                            f"Image is too large: {_mib(int(declared))}, the limit is {_mib(limit)}.",
                            param=param,
                            code="image_too_large",
                        )
                    buf = bytearray()
                    async for chunk in resp.aiter_bytes():
                        buf += chunk
                        if len(buf) > limit:
                            raise APIError(
                                400,
                                f"Image is too large: more than {_mib(limit)}.",
                                param=param,
                                code="image_too_large",
                            )
                    return bytes(buf)
        except TimeoutError:
            raise APIError(
                400,
                f"Timed out fetching image URL after {self.limits.fetch_timeout:g} s.",
                param=param,
                code="image_fetch",
            ) from None
        except httpx.InvalidURL as exc:
            raise APIError(400, f"Invalid image URL: {exc}.", param=param, code="invalid_image_url") from None
        except httpx.HTTPError as exc:
            raise APIError(
                400,
                f"Could not fetch image URL: {type(exc).__name__}: {exc}",
                param=param,
                code="image_fetch",
            ) from None
