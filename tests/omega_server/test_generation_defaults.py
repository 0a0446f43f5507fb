"""The checkpoint's generation_config.json gives the defaults of a request's unset sampling fields
(as vLLM does): a server on a tiny checkpoint whose generation_config sets top_k 1 at temperature 1.5
answers greedily when the request sets neither, and a request's own values win."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from omega_server.engine.load import sampling_defaults

from tests.omega_server.live import AUTH, SHARED_ENV, ThreadServer

SET = {"temperature": 1.5, "top_k": 1, "top_p": 0.9, "repetition_penalty": 1.0}


def with_generation_config(src: Path, dst: Path, values: dict[str, Any]) -> Path:
    shutil.copytree(src, dst)
    path = dst / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**config, **values}))
    return dst


@pytest.fixture(scope="module")
def client(
    tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("gen-config")
    model = with_generation_config(tiny_checkpoint("qwen2_vl"), root / "model", SET)
    server = ThreadServer({**SHARED_ENV, "MODEL_PATH": str(model)}).start()
    try:
        assert server.engine.info.sampling_defaults == SET
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            yield c
    finally:
        server.stop()


def answer(client: httpx.Client, **fields: Any) -> str:
    body = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 8, **fields}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    text: str = r.json()["choices"][0]["message"]["content"]
    return text


def test_unset_fields_take_the_models_defaults(client: httpx.Client) -> None:
    greedy = answer(client, temperature=0)
    assert {answer(client, seed=s) for s in range(5)} == {greedy}  # top_k 1 from generation_config


def test_a_requests_own_values_win(client: httpx.Client) -> None:
    # top_k 0 turns the model's top_k off: temperature 1.5 (also the model's) on a random tiny model
    # gives different answers for different seeds
    assert len({answer(client, top_k=0, seed=s) for s in range(5)}) > 1
    assert len({answer(client, top_k=-1, top_p=1.0, temperature=1.0, seed=s) for s in range(5)}) > 1


def test_only_usable_values_the_file_sets_are_read(tmp_path: Path) -> None:
    assert sampling_defaults(tmp_path) == {}  # no file
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {
                "temperature": 0.7,
                "top_k": 20,
                "top_p": 1.5,
                "min_p": True,
                "do_sample": True,
                "eos_token_id": 2,
            }
        )
    )
    assert sampling_defaults(tmp_path) == {"temperature": 0.7, "top_k": 20}
    (tmp_path / "generation_config.json").write_text("not json")
    assert sampling_defaults(tmp_path) == {}
