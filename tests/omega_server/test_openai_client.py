"""The official `openai` Python client against the real server, as a user would use it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.omega_server.live import API_KEY, ThreadServer, data_url, png_bytes


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


MESSAGES: Any = [
    {"role": "system", "content": "You describe pictures."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What colour is this?"},
            {
                "type": "image_url",
                "image_url": {"url": data_url(png_bytes((48, 48), (10, 200, 10))), "detail": "low"},
            },
        ],
    },
]


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny-vlm"]


def test_chat_completion(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=6, temperature=0)
    assert resp.object == "chat.completion"
    assert resp.model == "tiny-vlm"
    assert resp.choices[0].message.role == "assistant"
    assert isinstance(resp.choices[0].message.content, str)
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and 1 <= resp.usage.completion_tokens <= 6
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=6, temperature=0)
    stream = client.chat.completions.create(
        model="tiny-vlm",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage is not None and full.usage is not None
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_max_completion_tokens_and_stop(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tiny-vlm",
        messages=MESSAGES,
        max_completion_tokens=2,
        stop=["\x00never"],
        seed=7,
    )
    assert resp.usage is not None and resp.usage.completion_tokens <= 2


def test_errors_map_to_client_exceptions(client: openai.OpenAI, server: ThreadServer) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=MESSAGES, max_tokens=2)
    assert "nope" in nf.value.message and nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-vlm", messages=MESSAGES, max_tokens=2, n=3)
    assert bad.value.param == "n"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tiny-vlm", messages=[{"role": "user", "content": ""}], max_tokens=2
        )
    with (
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.models.list()
