"""The bench's workloads as data: what each request of a cell holds (images, text, output tokens, a
response format) and how the cell sends them (one wave, a closed loop, or a burst into running streams).

No torch here: the HTTP client process builds its request bodies from a ``Scenario``. Every image of a
run is new unless the scenario repeats images on purpose (``distinct_images``), so a prefix or image
cache in the server cannot serve one cell, or a warm-up, from another: each cell gets its own seed range.

``standard`` is issue 7's workload (one 448x448 image, 512 prompt tokens, 512 output tokens). The others:

- ``vision4x1024`` / ``vision1x1792`` (issue 13): four 1024x1024 images, or one 1792x1792 image, plus 128
  text tokens and 256 output tokens per request; sent as JPEG (a PNG of 1024x1024 noise takes ~0.7 s to
  encode in the client and is 4 MB).
- ``prefix`` (issue 16, prefix caching): a shared 400-token instruction (system message), one of 8 images
  and a short question of its own per request; 64 requests, ``concurrency`` of them in flight at a time.
- ``burst`` (issue 16, chunked prefill): ``concurrency`` streams run, then 16 new requests arrive at once
  (when every running stream has 16 tokens); the ITL p95 of the running streams during the burst vs before.
- ``json_schema`` (issue 15): the standard request with a strict ``response_format: json_schema``; the cell
  runs once without it (``json_schema_off``) right before, for the comparison.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.vlmbench.workload import filler_text, image_data_url, noise_image

INSTRUCTION = (
    "You are a careful visual analyst. Read the image and answer in plain English. Name each object, its "
    "colour and where it is in the frame, transcribe any visible text exactly, and note anything unusual. "
)
JSON_INSTRUCTION = (
    "Reply with one JSON object with the keys caption (a sentence), objects (a list of name and count) "
    "and has_text (whether the image shows text). "
)

#: The strict schema every ``json_schema`` request carries (OpenAI ``response_format``).
IMAGE_REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "objects": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
                "required": ["name", "count"],
                "additionalProperties": False,
            },
        },
        "has_text": {"type": "boolean"},
    },
    "required": ["caption", "objects", "has_text"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "image_report", "strict": True, "schema": IMAGE_REPORT_SCHEMA},
}
SCHEDULES: tuple[str, ...] = ("wave", "closed", "burst")


@dataclass(frozen=True)
class Scenario:
    """One workload. Text lengths are characters: the bench's byte-level tokenizer makes one token each."""

    name: str
    images_per_request: int = 1
    image_size: int = 448
    image_format: str = "PNG"
    text_chars: int = 0  # filler in the user turn, after ``instruction``
    prompt_tokens: int | None = None  # when set, the harness fits text_chars to this prompt length
    output_tokens: int = 512
    system_chars: int = 0  # a shared instruction as the system message
    distinct_images: int | None = None  # None: every image new; k: request i shows image set i % k
    question: bool = False  # a short question of each request's own after the image
    instruction: str = ""
    response_format: dict[str, Any] | None = None
    schedule: str = "wave"
    requests: int | None = None  # closed loop: requests in all (``concurrency`` in flight)
    burst_requests: int = 0  # burst: requests that arrive while ``concurrency`` streams run
    burst_after_tokens: int = 16  # ... once every running stream has this many tokens
    burst_output_tokens: int = 32
    temperature: float = 0.0
    default_concurrency: tuple[int, ...] = (1,)
    companion: str | None = None  # a variant run right before it in the same cell (json_schema_off)
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.images_per_request < 0 or self.output_tokens < 1:
            raise ValueError("a scenario needs images_per_request >= 0 and output_tokens >= 1")
        if self.image_format.upper() not in ("PNG", "JPEG"):
            raise ValueError(f"image_format must be PNG or JPEG, got {self.image_format!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for the client process and the rows)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        """The inverse of ``to_dict``."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["default_concurrency"] = tuple(values.get("default_concurrency", (1,)))
        return cls(**values)

    def with_(self, **changes: Any) -> Scenario:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("standard", prompt_tokens=512, output_tokens=512, default_concurrency=(1, 4, 64)),
        Scenario(
            "vision4x1024",
            images_per_request=4,
            image_size=1024,
            image_format="JPEG",
            text_chars=128,
            output_tokens=256,
            default_concurrency=(1, 16),
        ),
        Scenario(
            "vision1x1792",
            image_size=1792,
            image_format="JPEG",
            text_chars=128,
            output_tokens=256,
            default_concurrency=(1, 16),
        ),
        Scenario(
            "prefix",
            image_format="JPEG",
            system_chars=400,
            distinct_images=8,
            question=True,
            output_tokens=128,
            schedule="closed",
            requests=64,
            default_concurrency=(16,),
        ),
        Scenario(
            "burst",
            prompt_tokens=512,
            output_tokens=512,
            schedule="burst",
            burst_requests=16,
            burst_after_tokens=16,
            burst_output_tokens=32,
            default_concurrency=(16,),
        ),
        Scenario(
            "json_schema",
            prompt_tokens=512,
            output_tokens=512,
            instruction=JSON_INSTRUCTION,
            response_format=JSON_SCHEMA_FORMAT,
            companion="json_schema_off",
            default_concurrency=(1, 64),
        ),
    )
}


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; ValueError listing the known ones otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(SCENARIOS)}") from None


def companion_of(scenario: Scenario) -> Scenario | None:
    """The variant run before ``scenario`` in the same cell: ``json_schema`` without its response_format."""
    if scenario.companion is None:
        return None
    return scenario.with_(name=scenario.companion, response_format=None, companion=None)


# --------------------------------------------------------------------------- requests of a cell


def request_count(scenario: Scenario, concurrency: int) -> int:
    """Requests one cell sends."""
    if scenario.schedule == "closed":
        return scenario.requests or concurrency
    if scenario.schedule == "burst":
        return concurrency + scenario.burst_requests
    return concurrency


def slots_needed(scenario: Scenario, concurrency: int) -> int:
    """Requests in flight at once (what the engine's batch must hold)."""
    return concurrency + (scenario.burst_requests if scenario.schedule == "burst" else 0)


def groups(scenario: Scenario, concurrency: int) -> list[str]:
    """Each request's group: ``running``/``burst`` (burst); ``first:K``/``repeat:K`` (the first request
    that shows image set K, or a later one: see ``stats.prefix_ttft``); else empty."""
    n = request_count(scenario, concurrency)
    if scenario.schedule == "burst":
        return ["running"] * concurrency + ["burst"] * scenario.burst_requests
    if scenario.distinct_images:
        k = scenario.distinct_images
        return [f"{'first' if i < k else 'repeat'}:{i % k}" for i in range(n)]
    return [""] * n


def output_tokens_of(scenario: Scenario, group: str) -> int:
    """max_tokens of a request of ``group``."""
    return scenario.burst_output_tokens if group == "burst" else scenario.output_tokens


def image_seeds(scenario: Scenario, seed: int, request: int) -> list[int]:
    """Seeds of request ``request``'s images (``seed`` is the cell's first seed)."""
    index = request % scenario.distinct_images if scenario.distinct_images else request
    base = seed + index * scenario.images_per_request
    return [base + j for j in range(scenario.images_per_request)]


def seeds_used(scenario: Scenario, concurrency: int) -> int:
    """How many image seeds a cell uses (the next cell starts after them)."""
    n = request_count(scenario, concurrency)
    sets = min(n, scenario.distinct_images) if scenario.distinct_images else n
    return max(1, sets * max(1, scenario.images_per_request))


def system_text(scenario: Scenario) -> str:
    """The shared instruction (empty when the scenario has none)."""
    if scenario.system_chars <= 0:
        return ""
    return (INSTRUCTION * (scenario.system_chars // len(INSTRUCTION) + 1))[: scenario.system_chars]


def user_text(scenario: Scenario, request: int) -> str:
    """The text of request ``request``'s user turn."""
    text = scenario.instruction + filler_text(scenario.text_chars)
    if scenario.question:
        text += f" Question {request}: what changed since picture {request % 7}?"
    return text


def _content(
    images: list[Any], text: str, image_part: Callable[[Any], dict[str, Any]]
) -> list[dict[str, Any]]:
    return [*(image_part(image) for image in images), {"type": "text", "text": text}]


def engine_chat(scenario: Scenario, images: list[Any], request: int) -> list[dict[str, Any]]:
    """The chat of one request in the engine's form (PIL images)."""
    messages: list[dict[str, Any]] = []
    if scenario.system_chars:
        messages.append({"role": "system", "content": system_text(scenario)})
    content = _content(images, user_text(scenario, request), lambda im: {"type": "image", "image": im})
    messages.append({"role": "user", "content": content})
    return messages


def openai_chat(scenario: Scenario, urls: list[str], request: int) -> list[dict[str, Any]]:
    """The same chat as an OpenAI ``messages`` list (images as data URLs)."""
    messages: list[dict[str, Any]] = []
    if scenario.system_chars:
        messages.append({"role": "system", "content": system_text(scenario)})
    part: Callable[[Any], dict[str, Any]] = lambda url: {"type": "image_url", "image_url": {"url": url}}  # noqa: E731
    messages.append({"role": "user", "content": _content(urls, user_text(scenario, request), part)})
    return messages


def request_body(
    scenario: Scenario, model: str, urls: list[str], request: int, max_tokens: int
) -> dict[str, Any]:
    """One streaming chat-completion body (usage in the last chunk)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": openai_chat(scenario, urls, request),
        "max_tokens": max_tokens,
        "temperature": scenario.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if scenario.response_format is not None:
        body["response_format"] = scenario.response_format
    return body


def build_bodies(
    scenario: Scenario, model: str, concurrency: int, seed: int, max_tokens: int | None = None
) -> list[tuple[str, bytes]]:
    """``(group, JSON body)`` of every request of a cell, images made and encoded (each seed once)."""
    urls: dict[int, str] = {}

    def url(s: int) -> str:
        if s not in urls:
            urls[s] = image_data_url(noise_image(scenario.image_size, s), scenario.image_format.upper())
        return urls[s]

    out = []
    for i, group in enumerate(groups(scenario, concurrency)):
        tokens = max_tokens if max_tokens is not None else output_tokens_of(scenario, group)
        body = request_body(scenario, model, [url(s) for s in image_seeds(scenario, seed, i)], i, tokens)
        out.append((group, json.dumps(body).encode()))
    return out


def json_conforms(text: str | None, schema: dict[str, Any] = IMAGE_REPORT_SCHEMA) -> bool:
    """Whether ``text`` parses as a JSON object with the schema's required keys, no others when
    ``additionalProperties`` is false, and top-level values of the declared types (a shallow check)."""
    if not text:
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    props: dict[str, Any] = schema.get("properties", {})
    if any(k not in value for k in schema.get("required", [])):
        return False
    if schema.get("additionalProperties") is False and any(k not in props for k in value):
        return False
    types: dict[str, Any] = {
        "string": str,
        "array": list,
        "object": dict,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    for key, sub in props.items():
        expected = types.get(str(sub.get("type")))
        if key in value and expected is not None and not isinstance(value[key], expected):
            return False
    return True
