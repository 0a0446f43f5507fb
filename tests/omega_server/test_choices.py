"""n > 1 through the official openai client against the real server: n different choices with a
temperature, streaming and not, reproducible with a seed, usage over all choices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.omega_server.live import API_KEY, ThreadServer

MESSAGES: Any = [{"role": "user", "content": "Write a word."}]
ARGS: Any = {"model": "tiny-vlm", "messages": MESSAGES, "max_tokens": 8, "temperature": 1.3, "n": 2}


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


def test_two_different_choices(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(**ARGS, seed=11)
    assert [c.index for c in resp.choices] == [0, 1]
    texts = [c.message.content for c in resp.choices]
    assert texts[0] != texts[1]
    assert resp.usage is not None
    again = client.chat.completions.create(**ARGS, seed=11)
    assert [c.message.content for c in again.choices] == texts  # seed + i per choice: reproducible
    one = client.chat.completions.create(**{**ARGS, "n": 1}, seed=11)
    assert one.choices[0].message.content == texts[0]  # choice 0 is what n=1 gives
    assert one.usage is not None and one.usage.completion_tokens < resp.usage.completion_tokens


def test_two_streamed_choices(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(**ARGS, seed=4, logprobs=True)
    texts = ["", ""]
    finishes: list[Any] = [None, None]
    usage = None
    for chunk in client.chat.completions.create(
        **ARGS, seed=4, logprobs=True, stream=True, stream_options={"include_usage": True}
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
        usage = chunk.usage or usage
    assert texts == [c.message.content for c in full.choices] and texts[0] != texts[1]
    assert finishes == [c.finish_reason for c in full.choices]
    assert usage is not None and full.usage is not None
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens
