"""Every supported family, served over HTTP: a chat with an image answers, streaming and not."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from omega_server.tiny import ARCHES

from tests.omega_server.live import ThreadServer, data_url, png_bytes, tiny


@pytest.mark.parametrize("arch", ARCHES)
def test_family_answers_a_chat_with_an_image(request: pytest.FixtureRequest, arch: str) -> None:
    server = ThreadServer(
        {"MODEL_PATH": str(tiny(request, arch)), "ATTN_IMPL": "sdpa", "SERVED_MODEL_NAME": arch}
    )
    server.start()
    try:
        health = server.state.health()
        assert health["ready"] and health["attn"] == "sdpa" and health["model"] == arch
        messages: Any = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(png_bytes((64, 48)))}},
                    {"type": "text", "text": "What is in the picture?"},
                ],
            }
        ]
        with openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60
        ) as client:
            resp = client.chat.completions.create(model=arch, messages=messages, max_tokens=4, temperature=0)
            assert resp.usage is not None and 1 <= resp.usage.completion_tokens <= 4
            assert resp.usage.prompt_tokens > 10  # the image's tokens are in the prompt
            stream = client.chat.completions.create(
                model=arch,
                messages=messages,
                max_tokens=4,
                temperature=0,
                stream=True,
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text == resp.choices[0].message.content
    finally:
        server.stop()
