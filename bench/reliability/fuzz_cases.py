"""Hypothesis strategies for bad (and some good) `/v1/chat/completions` requests: the fuzzer's inputs.

A ``Case`` is what goes on the wire: the raw body bytes, the content type, and a name for the report.
Built from the server's request shape (`omega_server.protocol`) and beyond it: wrong types, unicode
(lone surrogates, RTL and zero-width marks), huge numbers, deep nesting, truncated and oversized bodies,
every malformed image part of `bad_images`. Pure: generates bytes, sends nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from bench.reliability.bad_images import bad_image_urls

MODEL = "tiny-vlm"

#: Strings that break naive text handling.
NASTY_TEXT = [
    "\ud800",  # a lone surrogate (JSON-escaped on the wire as \ud800)
    "\udfff\ud800",
    "\u202eevil\u202c",  # right-to-left override
    "\u200b\u200c\u200d\ufeff",  # zero-width characters and a BOM
    "\x00\x01\x1b[31m",
    "🧪" * 200,
    "a" * 20_000,
    "<|im_end|><|im_start|>system",
    "<|image_pad|>" * 50,
    "",
]

FIELDS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream",
    "stop", "seed", "n", "stream_options", "response_format", "logprobs", "tools", "user",
]  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One request to send."""

    kind: str
    body: bytes
    content_type: str = "application/json"


def json_values(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    """Any JSON value, with huge and odd numbers and nasty strings among them."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([0, -1, 2**31, 2**63, 10**400, -(10**400)]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([1e308, -1e308, 5e-324, 1e-40]),
        st.text(max_size=30),
        st.sampled_from(NASTY_TEXT),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=max_leaves,
    )


def valid_body(text: str = "Say hi.", image_url: str | None = None, stream: bool = False) -> dict[str, Any]:
    content: Any = text
    if image_url is not None:
        content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}]
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "stream": stream,
    }


def _dump(body: Any) -> bytes:
    return json.dumps(body).encode()  # ensure_ascii escapes lone surrogates, as a real client may send them


@st.composite
def field_mutations(draw: st.DrawFn) -> Case:
    """A valid body with one to three top-level fields replaced by arbitrary JSON, deleted or added."""
    body = valid_body(stream=draw(st.booleans()))
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from([*FIELDS, draw(st.text(min_size=1, max_size=12))]))
        if draw(st.booleans()) and field in body:
            del body[field]
        else:
            body[field] = draw(json_values())
    return Case("field_mutation", _dump(body))


@st.composite
def message_mutations(draw: st.DrawFn) -> Case:
    """Messages of every wrong shape: roles, content parts, nesting, nasty text."""
    role = draw(st.sampled_from(["user", "system", "assistant", "tool", "developer", "", "USER", None, 7]))
    text = draw(st.sampled_from(NASTY_TEXT) | st.text(max_size=40))
    part = draw(
        st.sampled_from(
            [
                {"type": "text", "text": text},
                {"type": "text"},
                {"type": "image_url"},
                {"type": "image_url", "image_url": text},
                {"type": "image_url", "image_url": {"url": None}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                {"type": "video", "video": "x"},
                {"type": text},
            ]
        )
        | json_values(4)
    )
    content = draw(st.sampled_from(["string", "parts", "other"]))
    message: dict[str, Any] = {"role": role}
    if content == "string":
        message["content"] = text
    elif content == "parts":
        message["content"] = [part] * draw(st.integers(0, 3))
    else:
        message["content"] = draw(json_values(4))
    messages = draw(st.lists(st.just(message), min_size=0, max_size=3))
    body = valid_body(stream=draw(st.booleans()))
    body["messages"] = messages if draw(st.integers(0, 5)) else draw(json_values())
    return Case("message_mutation", _dump(body))


@st.composite
def valid_cases(draw: st.DrawFn) -> Case:
    """A valid request: any printable text, a short generation, streamed or not."""
    body = valid_body(text=draw(st.text(min_size=1, max_size=60)), stream=draw(st.booleans()))
    body["max_tokens"] = draw(st.integers(1, 8))
    return Case("valid", _dump(body))


@st.composite
def image_cases(draw: st.DrawFn) -> Case:
    """A valid request whose image part is malformed in one of the `bad_images` ways."""
    name, url = draw(st.sampled_from(bad_image_urls()))
    text = draw(st.sampled_from(NASTY_TEXT[:6]) | st.text(max_size=20))
    return Case(
        f"image_{name}", _dump(valid_body(text=text or "x", image_url=url, stream=draw(st.booleans())))
    )


@st.composite
def framing_cases(draw: st.DrawFn) -> Case:
    """Bodies broken below JSON: truncated, deeply nested, oversized, not JSON, wrong content type."""
    kind = draw(
        st.sampled_from(
            ["truncated", "deep", "oversized", "random_bytes", "wrong_type", "not_object", "empty"]
        )
    )
    good = _dump(valid_body())
    if kind == "truncated":
        return Case(kind, good[: draw(st.integers(0, len(good) - 1))])
    if kind == "deep":
        depth = draw(st.sampled_from([100, 1000, 10_000, 100_000]))
        body = b'{"model":"' + MODEL.encode() + b'","messages":' + b"[" * depth + b"]" * depth + b"}"
        return Case(kind, body)
    if kind == "oversized":
        return Case(kind, _dump(valid_body(text="x" * draw(st.sampled_from([2**20, 12 * 2**20])))))
    if kind == "random_bytes":
        return Case(kind, draw(st.binary(max_size=200)))
    if kind == "wrong_type":
        return Case(
            kind, good, draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", ""]))
        )
    if kind == "not_object":
        return Case(kind, _dump(draw(st.sampled_from([[], "x", 1, None, [valid_body()]]))))
    return Case(kind, b"")


def families() -> dict[str, st.SearchStrategy[Case]]:
    """Every kind of case by family; the fuzzer gives each family an equal share of the requests.

    The valid family keeps the engine doing real work between the bad requests.
    """
    return {
        "valid": valid_cases(),
        "fields": field_mutations(),
        "messages": message_mutations(),
        "images": image_cases(),
        "framing": framing_cases(),
    }
