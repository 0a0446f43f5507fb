"""Malformed image payloads for the fuzzer: every way an image part of a chat request can be wrong.

Each entry is (name, data URL or URL string). Pure: builds bytes in memory, no I/O.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid-looking PNG that declares width x height 8-bit grey pixels, compressed to a few hundred KB.

    Only a few rows of data follow: a decoder that trusts the header allocates width x height first.
    """
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    rows = zlib.compress(b"\x00" + b"\x00" * width, 9) * 4
    return b"\x89PNG\r\n\x1a\n" + header + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def data_url(raw: bytes | str, mime: str = "image/png") -> str:
    payload = raw if isinstance(raw, str) else base64.b64encode(raw).decode()
    return f"data:{mime};base64,{payload}"


def bad_image_urls() -> list[tuple[str, str]]:
    """Every malformed image part the fuzzer sends, by name."""
    png = _png((32, 32))
    jpeg = _jpeg((32, 32))
    return [
        ("bad_base64", "data:image/png;base64,!!!not*base64***"),
        ("base64_padding", "data:image/png;base64," + base64.b64encode(png).decode().rstrip("=") + "="),
        ("wrong_mime_text", data_url(png, "text/plain")),
        ("wrong_mime_svg", data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")),
        ("mime_says_jpeg_png_inside", data_url(png, "image/jpeg")),
        ("zero_size", "data:image/png;base64,"),
        ("truncated_png", data_url(png[: len(png) // 2])),
        ("truncated_jpeg", data_url(jpeg[: len(jpeg) // 2], "image/jpeg")),
        ("png_header_only", data_url(png[:8])),
        ("not_an_image", data_url(b"hello world" * 10)),
        ("decompression_bomb", data_url(png_bomb())),
        ("strip_1x50000", data_url(_png((1, 50000), "L"))),
        ("strip_50000x1", data_url(_png((50000, 1), "L"))),
        ("zero_width_header", data_url(png_bomb(0, 10))),
        ("no_data_prefix", base64.b64encode(png).decode()),
        ("data_url_no_base64", "data:image/png," + "x" * 64),
        ("file_scheme", "file:///etc/passwd"),
        ("ftp_scheme", "ftp://example.invalid/a.png"),
        ("unresolvable_host", "http://omega-fuzz.invalid/a.png"),
        ("empty_url", ""),
        ("huge_url", "http://a.invalid/" + "a" * 100_000),
    ]
