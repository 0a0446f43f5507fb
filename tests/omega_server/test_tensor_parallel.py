"""Tensor parallelism on the CPU: two gloo processes shard the tiny models and decode greedily like one."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omega_server.engine import tensor_parallel as tp

PROMPT = [[1, 5, 9, 22, 40, 7]]


def _greedy(path: Path, size: int) -> list[list[int]]:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, **tp.load_kwargs(size))
    group = tp.current()
    tp.shard_experts(model, group)
    out = model.generate(torch.tensor(PROMPT), max_new_tokens=8, do_sample=False)
    return out.tolist()


def _rank(rank: int, port: int, path: str, results: Any) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    group = tp.init(2)
    try:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, **tp.load_kwargs(2))
        experts = tp.shard_experts(model, group)
        out = model.generate(torch.tensor(PROMPT), max_new_tokens=8, do_sample=False)
        kv = out_kv_heads(model)
        results[rank] = (out.tolist(), tp.sharded(model), experts, kv)
    finally:
        dist.destroy_process_group()


def out_kv_heads(model: Any) -> int:
    """The KV heads one rank's cache holds after a prefill."""
    out = model(torch.tensor(PROMPT), use_cache=True)
    return int(out.past_key_values.layers[0].keys.shape[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl_moe"])
def test_two_ranks_decode_like_one(tiny_checkpoint: Any, arch: str) -> None:
    path = tiny_checkpoint(arch)
    expected = _greedy(path, 1)
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), str(path), results), nprocs=2, join=True)
    for rank in (0, 1):
        tokens, is_sharded, experts, kv_heads = results[rank]
        assert tokens == expected
        assert is_sharded
        assert kv_heads == 1  # the tiny models' 2 KV heads, one per rank
        assert experts == (2 if arch == "qwen3_vl_moe" else 0)


def test_split_refused_with_the_numbers(tiny_checkpoint: Any) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_checkpoint("qwen2_5_vl"))
    tp.check_split(config, 2)
    with pytest.raises(tp.TensorParallelError, match=r"num_attention_heads=4.*not divisible by 3"):
        tp.check_split(config, 3)


def test_setting_defaults_to_one_and_reaches_the_engine_config() -> None:
    from omega_server.app import engine_config
    from omega_server.settings import load_settings

    assert load_settings({"MODEL_PATH": "/m"}).tensor_parallel_size == 1
    settings = load_settings({"MODEL_PATH": "/m", "TENSOR_PARALLEL_SIZE": "2"})
    assert engine_config(settings).tensor_parallel_size == 2


def test_health_reports_the_size() -> None:
    from omega_server.app import http_config
    from omega_server.engine.types import EngineInfo
    from omega_server.health import health_body
    from omega_server.settings import load_settings

    info = EngineInfo(
        attn="sdpa",
        attn_requested="sdpa",
        flash_attn={},
        dtype="torch.float32",
        devices=["cpu"],
        device_names=["cpu"],
        model_type="qwen2_5_vl",
        max_batch_size=4,
        max_model_length=64,
        tensor_parallel_size=2,
    )
    config = http_config(load_settings({"MODEL_PATH": "/m"}))
    assert health_body("ready", info, config, None)["tensor_parallel_size"] == 2
    assert health_body("loading", None, config, None)["tensor_parallel_size"] is None


def test_engine_refuses_more_than_one_rank_until_the_loop_lands(tiny_checkpoint: Any) -> None:
    from omega_server.engine import EngineConfig
    from omega_server.engine.load import load_engine

    config = EngineConfig(model_path=str(tiny_checkpoint("qwen2_5_vl")), tensor_parallel_size=2)
    with pytest.raises(tp.TensorParallelError, match="TENSOR_PARALLEL_SIZE=2"):
        load_engine(config)
