"""Triton for the server's kernels (``moe_decode``, ``splitk_attention``), and where they can run."""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of torch; a CPU-only install may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = None
    tl = None


def interpreting() -> bool:
    """Triton runs its kernels on the CPU, in its interpreter (set before Triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def available(device: torch.device) -> bool:
    """Triton kernels can run for tensors on ``device``: a GPU, or any device when interpreted."""
    if triton is None:
        return False
    return device.type == "cuda" or interpreting()
