"""logprobs and top_logprobs through the official openai client against the real server: OpenAI's
shapes, streaming and not, and tokens that join to the answer's text."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.omega_server.live import API_KEY, ThreadServer, data_url, png_bytes

MESSAGES: Any = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Describe this."},
            {"type": "image_url", "image_url": {"url": data_url(png_bytes((32, 32), (9, 90, 200)))}},
        ],
    }
]


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


@pytest.mark.parametrize("temperature", [0.0, 1.3])
def test_logprob_tokens_join_to_the_content(client: openai.OpenAI, temperature: float) -> None:
    resp = client.chat.completions.create(
        model="tiny-vlm",
        messages=MESSAGES,
        max_tokens=12,
        temperature=temperature,
        seed=5,
        logprobs=True,
        top_logprobs=3,
    )
    choice = resp.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert resp.usage is not None and len(entries) == resp.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.bytes == list(e.token.encode())
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert e.logprob <= tops[0] + 1e-6
        if temperature == 0:  # greedy: the chosen token is the likeliest one
            assert math.isclose(e.logprob, tops[0], abs_tol=1e-5)


def test_streamed_logprobs_match_the_answer(client: openai.OpenAI) -> None:
    kwargs: Any = {"model": "tiny-vlm", "messages": MESSAGES, "max_tokens": 10, "temperature": 0}
    full = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=2)
    text, tokens, values = "", [], []
    for chunk in client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=2, stream=True):
        if not chunk.choices:
            continue
        text += chunk.choices[0].delta.content or ""
        lp = chunk.choices[0].logprobs
        if lp is not None and lp.content:
            tokens += [e.token for e in lp.content]
            values += [e.logprob for e in lp.content]
            assert all(len(e.top_logprobs) == 2 for e in lp.content)
    assert full.choices[0].logprobs is not None and full.choices[0].logprobs.content is not None
    assert text == full.choices[0].message.content == "".join(tokens)
    want = [e.logprob for e in full.choices[0].logprobs.content]
    assert len(values) == len(want) and all(
        math.isclose(a, b, abs_tol=1e-4) for a, b in zip(values, want, strict=True)
    )


def test_no_logprobs_unless_asked(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=3, temperature=0)
    assert resp.choices[0].logprobs is None
    resp = client.chat.completions.create(
        model="tiny-vlm", messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True
    )
    content = resp.choices[0].logprobs.content if resp.choices[0].logprobs else None
    assert content is not None and all(e.top_logprobs == [] for e in content)


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"top_logprobs": 2}, "top_logprobs")],
)
def test_bad_logprob_requests_are_refused(client: openai.OpenAI, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=2, **fields)
    assert bad.value.param == param


def test_static_and_dynamic_runners_give_the_same_logprobs_and_penalized_tokens(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """The static slot cache (pipelined steps, batched prefill) reports what the dynamic cache does,
    and its penalty counts (kept on the device across pipelined steps) steer the same tokens."""
    from omega_server.engine import Engine, EngineConfig

    from tests.omega_server.test_engine import chat

    path = str(tiny_checkpoint("qwen2_5_vl"))
    reqs = [
        chat(0, max_tokens=8, logprobs=True, top_logprobs=4),
        chat(1, max_tokens=8, logprobs=True, repetition_penalty=1.5, frequency_penalty=0.8),
    ]
    results = []
    for kv in ("dynamic", "static"):
        eng = Engine.load(EngineConfig(model_path=path, attn_impl="sdpa", kv_cache=kv, max_batch_size=2))
        try:
            results.append([eng.generate_sync(eng.prepare(r), timeout=120) for r in reqs])
        finally:
            eng.shutdown()
    for dyn, sta, req in zip(*results, reqs, strict=True):
        assert [t for o in dyn for t in o.token_ids] == [t for o in sta for t in o.token_ids]
        d = [e for o in dyn for e in o.logprobs or ()]
        s = [e for o in sta for e in o.logprobs or ()]
        assert len(d) == len(s) == sum(len(o.token_ids) for o in dyn)
        assert "".join(e.token for e in s) == "".join(o.text for o in sta)
        for a, b in zip(d, s, strict=True):
            assert math.isclose(a.logprob, b.logprob, abs_tol=1e-3)
            assert len(b.top) == req.params.top_logprobs
            assert [t for t, _, _ in a.top] == [t for t, _, _ in b.top]
