"""Tensor parallelism's core: the process group, the split check, and sharding a model over the ranks.

One process per rank (torchrun-style ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``): NCCL on
CUDA, gloo on the CPU. The dense layers are sharded by transformers' own tensor-parallel plan of the
model family (``DistributedConfig(tp_plan="auto")``: q/k/v and gate/up column-parallel, o and down
row-parallel with their all-reduce, so each rank's KV cache holds its own KV heads). The fused MoE
experts, which that plan leaves replicated, are sharded here: each expert's gate/up rows
(column-parallel) and down columns (row-parallel), with an all-reduce of the experts' output.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


class TensorParallelError(ValueError):
    """A model or environment that cannot run at the asked tensor-parallel size."""


@dataclass(frozen=True)
class Group:
    """This process's place in the tensor-parallel group."""

    rank: int = 0
    size: int = 1
    backend: str = ""


_GROUP = Group()


def current() -> Group:
    """The initialised group (size 1 when tensor parallelism is off)."""
    return _GROUP


def init(size: int, *, timeout_hours: float = 24 * 365) -> Group:
    """Join the process group of ``size`` ranks (env ``RANK``, ``WORLD_SIZE``, ``MASTER_*``).

    The timeout is long: a follower waits in a broadcast for as long as the server is idle.
    """
    global _GROUP
    if size < 1:
        raise TensorParallelError(f"TENSOR_PARALLEL_SIZE must be >= 1, got {size}")
    if size == 1:
        _GROUP = Group()
        return _GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != size:
        raise TensorParallelError(
            f"TENSOR_PARALLEL_SIZE={size} but WORLD_SIZE={world} processes were started"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=timeout_hours))
    _GROUP = Group(rank=dist.get_rank(), size=dist.get_world_size(), backend=backend)
    return _GROUP


def text_config(config: Any) -> Any:
    """The language model's config (``text_config`` of a VLM, else the config itself)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else getattr(config, "text_config", config)


def check_split(config: Any, size: int) -> None:
    """Raise ``TensorParallelError`` naming the numbers when the model cannot split ``size`` ways."""
    if size == 1:
        return
    text = text_config(config)
    heads = getattr(text, "num_attention_heads", None)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    checks = {
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": getattr(text, "intermediate_size", None),
        "moe_intermediate_size": getattr(text, "moe_intermediate_size", None),
    }
    bad = [f"{name}={value}" for name, value in checks.items() if isinstance(value, int) and value % size]
    if bad:
        raise TensorParallelError(
            f"TENSOR_PARALLEL_SIZE={size} cannot split this model: {', '.join(bad)} not divisible by {size}"
        )


def load_kwargs(size: int) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that shard the dense layers by the family's TP plan."""
    if size == 1:
        return {}
    from transformers.distributed import DistributedConfig

    return {"distributed_config": DistributedConfig(tp_plan="auto")}


def _all_reduce_output(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(output)
    return output


def shard_experts(model: Any, group: Group) -> int:
    """Shard every fused-experts module (3-D ``gate_up_proj`` and ``down_proj``) the plan left whole.

    Returns how many modules were sharded. The output of the experts is a weighted sum of each
    expert's down projection, so the partial sums of the ranks add up with one all-reduce.
    """
    if group.size == 1:
        return 0
    count = 0
    for module in model.modules():
        gate_up = getattr(module, "gate_up_proj", None)
        down = getattr(module, "down_proj", None)
        if not (isinstance(gate_up, torch.nn.Parameter) and isinstance(down, torch.nn.Parameter)):
            continue
        if gate_up.dim() != 3 or type(gate_up) is not torch.nn.Parameter:
            continue
        inter = down.shape[-1]
        if gate_up.shape[1] != 2 * inter or inter % group.size:
            raise TensorParallelError(f"cannot split experts of intermediate size {inter} {group.size} ways")
        part = inter // group.size
        lo, hi = group.rank * part, (group.rank + 1) * part
        gate, up = gate_up.data[:, :inter], gate_up.data[:, inter:]
        local = torch.cat([gate[:, lo:hi], up[:, lo:hi]], dim=1).contiguous()
        module.gate_up_proj = torch.nn.Parameter(local, requires_grad=False)
        module.down_proj = torch.nn.Parameter(down.data[:, :, lo:hi].contiguous(), requires_grad=False)
        if hasattr(module, "intermediate_dim"):
            module.intermediate_dim = part
        module.register_forward_hook(_all_reduce_output)
        count += 1
    return count


def sharded(model: Any) -> bool:
    """Whether the model's attention projections are sharded (DTensor weights from the TP plan)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
