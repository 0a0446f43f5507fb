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
