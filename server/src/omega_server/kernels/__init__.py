"""The decode kernels, installed per loaded model: ``install(model, backend)`` and what it chose.

- ``gqa_decode``: one-token SDPA on the unexpanded key/value heads (``splitk_attention``'s Triton
  kernels on a GPU, PyTorch's SDPA on the packed heads elsewhere), for the ``sdpa`` backend.
- ``flash_decode``: one-token attention on the static slot cache through flash-attn's
  ``flash_attn_with_kvcache``, for the ``flash_attention_2`` backend.
- ``moe_decode``: the experts of a MoE model at small batch as two Triton GEMV kernels.
- ``tritonrt``: the one Triton import, and where its kernels can run.

Each model carries its own choice (its attention modules are marked, its config names its experts
path), so two engines in one process keep theirs: the last one loaded does not decide for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omega_server.kernels import flash_decode, gqa_decode, moe_decode


@dataclass(frozen=True)
class Installed:
    """The decode paths a model runs after ``install``."""

    gqa_decode: bool  # one-token attention packs the grouped heads (the sdpa backend only)
    experts: str | None  # a MoE model's experts path (omega_fused_decode, grouped_mm, ...); None if dense


def install(model: Any, backend: str, *, enabled: bool = True) -> Installed:
    """Use the decode kernels for ``model`` (attention ``backend``) where they apply, or (``enabled=False``)
    keep transformers' own paths for it. Other models in the process are left as they are."""
    gqa = enabled and backend == "sdpa"
    if gqa:
        gqa_decode.install(True)  # the process's sdpa function, which asks each model (enable)
    gqa_decode.enable(model, gqa)
    if backend == flash_decode.BACKEND:  # the static slot cache's decode step needs it: always on
        flash_decode.install(True)
    if enabled:
        moe_decode.install(model)
    return Installed(gqa_decode=gqa, experts=moe_decode.experts_implementation(model))


def configure_sdpa_kernels() -> None:
    """Keep PyTorch's cuDNN SDPA kernel out of decoding (process-wide; GPU engines call it at load).

    Measured on the H100 (torch 2.11, bench/gpu_profile.py): cuDNN SDPA builds an execution plan for
    every new (batch, KV length) shape, and decoding makes a new shape at every step: 100 ms per
    decode step of the Qwen2.5-VL-7B shape at batch 1 with it, 37 ms with PyTorch's flash /
    memory-efficient SDPA kernels, which need no per-shape plan.
    """
    import torch

    enable = getattr(torch.backends.cuda, "enable_cudnn_sdp", None)
    if enable is not None:
        enable(False)
