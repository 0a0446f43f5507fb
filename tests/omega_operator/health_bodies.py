"""/health bodies as the server sends them (DESIGN.md 3.2), for the prober tests."""

from __future__ import annotations

from typing import Any

READY_BODY: dict[str, Any] = {
    "status": "ready",
    "ready": True,
    "attn": "sdpa",
    "attn_requested": "flash_attention_2",
    "flash_attn": {
        "available": False,
        "loaded": False,
        "version": None,
        "error": "ImportError: FlashAttention2 has been toggled on, but it cannot be used",
    },
    "model": "omega-17-vl-exp",
    "dtype": "torch.bfloat16",
    "devices": ["cuda:0"],
    "device_names": ["NVIDIA H100 80GB HBM3"],
    "batch": {"max_batch_size": 4},
    "max_model_length": 8192,
    "version": "0.1.0",
}
# What the server sends while loading: what it does not know yet is null.
LOADING_BODY = {
    **READY_BODY,
    "status": "loading",
    "ready": False,
    "attn": None,
    "flash_attn": None,
    "dtype": None,
    "devices": [],
    "device_names": [],
    "error": None,
}
