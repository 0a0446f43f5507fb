"""Context limits: max_tokens unset means the room left in the context; MAX_MODEL_LENGTH within the model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from omega_server.engine import Engine, EngineConfig
from omega_server.engine.errors import ContextTooLongError
from omega_server.serving import default_budget
from omega_server.settings import load_settings

from tests.omega_server.live import ThreadServer, tiny

pytestmark = pytest.mark.timeout(300)


def test_the_default_budget_is_the_room_left_unless_a_default_is_set() -> None:
    assert default_budget(None, 8192, 100) == 8092
    assert default_budget(512, 8192, 100) == 512
    assert default_budget(512, 8192, 8000) == 192
    assert default_budget(None, 8192, 8192) == 1


def test_default_max_tokens_is_unset_by_default() -> None:
    assert load_settings({"MODEL_PATH": "/m"}).default_max_tokens is None
    assert load_settings({"MODEL_PATH": "/m", "DEFAULT_MAX_TOKENS": ""}).default_max_tokens is None
    assert load_settings({"MODEL_PATH": "/m", "DEFAULT_MAX_TOKENS": "64"}).default_max_tokens == 64


def test_an_answer_without_max_tokens_may_use_the_whole_context(request: pytest.FixtureRequest) -> None:
    """No silent 512-token cut: the output runs until EOS or the context is full."""
    server = ThreadServer({"MODEL_PATH": str(tiny(request)), "ATTN_IMPL": "sdpa", "MAX_MODEL_LENGTH": "1024"})
    server.start()
    try:
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "temperature": 0},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        usage, finish = body["usage"], body["choices"][0]["finish_reason"]
        if finish == "length":
            assert usage["prompt_tokens"] + usage["completion_tokens"] == 1024, usage
        else:  # the random model picked EOS first
            assert finish == "stop"
    finally:
        server.stop()


def test_max_model_length_above_the_models_positions_is_fatal_at_start(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    with pytest.raises(ContextTooLongError, match="max_position_embeddings=32768") as info:
        Engine.load(
            EngineConfig(
                model_path=str(tiny_checkpoint("qwen2_vl")), attn_impl="sdpa", max_model_length=65536
            )
        )
    assert info.value.kind == "max_model_length_too_large"
    assert "MAX_MODEL_LENGTH=65536" in str(info.value)
