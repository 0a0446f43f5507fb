"""Structured output (response_format json_schema / json_object) through the official openai client
against the real server: the tiny random model's answer is a schema-valid object (jsonschema), in
streams too, on both runners; a schema the grammar compiler refuses is a 400 naming response_format."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.omega_server.live import API_KEY, ThreadServer

# bounded strings and numbers: a random model ends its object well inside max_tokens
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3},
    },
    "required": ["name", "count", "ok", "tags"],
    "additionalProperties": False,
}
FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "report", "schema": SCHEMA, "strict": True}}
MESSAGES: Any = [{"role": "user", "content": "Report as JSON."}]


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_answers_validate(client: openai.OpenAI, temperature: float) -> None:
    for seed in range(3):
        resp = client.chat.completions.create(
            model="tiny-vlm",
            messages=MESSAGES,
            response_format=FORMAT,
            max_tokens=200,
            temperature=temperature,
            seed=seed,
        )
        choice = resp.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)


def test_json_schema_in_a_stream_and_with_n(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny-vlm",
        messages=MESSAGES,
        response_format=FORMAT,
        max_tokens=200,
        temperature=1.0,
        seed=2,
        n=2,
        stream=True,
    )
    texts = ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_is_an_object(client: openai.OpenAI) -> None:
    # any object: a random model may write long strings, so give it room and check what ended
    resp = client.chat.completions.create(
        model="tiny-vlm",
        messages=MESSAGES,
        response_format={"type": "json_object"},
        max_tokens=400,
        temperature=0,
    )
    text = resp.choices[0].message.content or ""
    assert text.startswith("{")
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        {"type": "grammar"},
    ],
)
def test_bad_response_formats_are_refused(client: openai.OpenAI, fmt: Any) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, response_format=fmt, max_tokens=4)
    assert bad.value.param == "response_format"


def test_static_runner_masks_too(tiny_checkpoint: Callable[[str], Path]) -> None:
    """The static slot cache (pipelined steps, the mask filled between forward and sampling) next to a free row."""
    from omega_server.engine import Engine, EngineConfig
    from omega_server.engine.types import GenerationRequest, SamplingParams

    eng = Engine.load(
        EngineConfig(
            model_path=str(tiny_checkpoint("qwen2_5_vl")),
            attn_impl="sdpa",
            kv_cache="static",
            max_batch_size=2,
        )
    )
    try:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "json please"}]}]
        grammar = ("json_schema", json.dumps(SCHEMA))
        free = eng.prepare(GenerationRequest(msgs, SamplingParams(max_tokens=30, temperature=1.0, seed=1)))
        held = eng.prepare(
            GenerationRequest(msgs, SamplingParams(max_tokens=200, temperature=1.0, seed=1, grammar=grammar))
        )
        import threading

        out: dict[str, Any] = {}
        t = threading.Thread(target=lambda: out.setdefault("free", eng.generate_sync(free, timeout=120)))
        t.start()
        outs = eng.generate_sync(held, timeout=120)
        t.join(120)
        assert outs[-1].finish_reason == "stop"
        jsonschema.validate(json.loads("".join(o.text for o in outs)), SCHEMA)
        assert out["free"][-1].finished
    finally:
        eng.shutdown()
