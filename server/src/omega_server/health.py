"""The ``GET /health`` body (DESIGN.md 3.2): one pure function of the phase, the engine's info and config.

``health_body`` is the one place the body is built; ``ServerState.health()`` calls it with what it
holds, and the operator's ``parse_report`` reads what it returns. The same keys come in every phase:
before the engine has loaded, what is unknown yet (``attn``, ``flash_attn``, ``dtype``, the decode
path) is null and the configured values stand in for the engine's.
"""

from __future__ import annotations

from typing import Any, Literal

from omega_server import __version__
from omega_server.http_config import HttpConfig

Phase = Literal["loading", "ready", "failed", "dead"]


def info_get(info: Any, key: str, default: Any = None) -> Any:
    """A field of the engine's info (an ``EngineInfo``), or ``default`` before the engine has loaded."""
    return default if info is None else getattr(info, key, default)


def decode_report(info: Any) -> dict[str, Any]:
    """`decode` of /health: the decode path the engine really runs (null fields before it loads).

    ``kv_cache`` static|dynamic, ``cuda_graphs``, ``compiled`` (torch.compile), ``gqa_decode`` (one-token
    attention on the unexpanded key/value heads), ``experts`` (a MoE model's experts path, e.g.
    ``omega_fused_decode`` or ``grouped_mm``; null for a dense model), ``flash_kernels`` (the
    flash-attn kernels the flash_attention_2 backend runs on the slot cache: ``flash_attn_with_kvcache``
    for decoding, ``flash_attn_varlen_func`` for prefill and the vision tower; null otherwise).
    """
    return {
        "kv_cache": info_get(info, "kv_cache"),
        "cuda_graphs": info_get(info, "cuda_graphs"),
        "compiled": info_get(info, "compiled"),
        "gqa_decode": info_get(info, "gqa_decode"),
        "experts": info_get(info, "experts_implementation"),
        "flash_kernels": info_get(info, "flash_kernels"),
    }


def kv_report(info: Any) -> dict[str, Any]:
    """`kv` of /health: the KV cache the engine really has (null fields before it loads).

    ``slots`` (requests decoded at once; fewer than ``max_batch_size`` when they did not fit in the
    device's memory, then ``lowered`` is true), ``token_capacity`` (slots x max_model_length),
    ``sized_from_memory`` (the slots were sized from the device's free memory) and ``budget_bytes``
    (the memory granted to the cache). On the dynamic cache ``slots`` is 0: it grows as it goes.
    ``prefix_caching``: prompts that share leading blocks with earlier ones reuse their keys and
    values (``ENABLE_PREFIX_CACHING`` on the static cache), in a store of ``prefix_cache_tokens``.
    """
    slots = info_get(info, "kv_slots")
    requested = info_get(info, "max_batch_size")
    return {
        "slots": slots,
        "token_capacity": info_get(info, "kv_token_capacity"),
        "lowered": None if info is None else bool(slots) and slots < requested,
        "sized_from_memory": info_get(info, "kv_sized_from_memory"),
        "budget_bytes": info_get(info, "kv_budget_bytes"),
        "prefix_caching": info_get(info, "prefix_caching"),
        "prefix_cache_tokens": info_get(info, "prefix_cache_tokens"),
    }


def flash_report(info: Any) -> dict[str, Any] | None:
    """`flash_attn` of /health: `{available, loaded, version, error, error_kind}`.

    ``error_kind`` classifies ``error`` (``omega_server.flash_failure``: ``not_installed``,
    ``import_error``, ``unsupported_device``, ``kernel_error``, ``out_of_memory``, ``other``); null
    when there is no error.
    """
    flash = info_get(info, "flash_attn")
    if flash is None:
        return None
    return {k: flash.get(k) for k in ("available", "loaded", "version", "error", "error_kind")}


def health_body(phase: Phase, info: Any, config: HttpConfig, error: str | None) -> dict[str, Any]:
    """The /health body for a server in ``phase`` with engine ``info`` (None before it loads).

    ``error`` is the load failure (phase ``failed``) or why the engine stopped (``dead``).
    """
    return {
        "status": phase,
        "ready": phase == "ready",
        "attn": info_get(info, "attn"),
        "attn_requested": info_get(info, "attn_requested", config.attn_impl),
        "flash_attn": flash_report(info),
        "model": config.model_name,
        "model_type": info_get(info, "model_type"),
        "dtype": str(info_get(info, "dtype")) if info is not None else None,
        "devices": [str(d) for d in info_get(info, "devices", []) or []],
        "device_names": [str(d) for d in info_get(info, "device_names", []) or []],
        "batch": {"max_batch_size": info_get(info, "max_batch_size", config.max_batch_size)},
        "max_model_length": info_get(info, "max_model_length", config.max_model_length),
        "decode": decode_report(info),
        "kv": kv_report(info),
        "tensor_parallel_size": info_get(info, "tensor_parallel_size"),
        "version": __version__,
        "error": error if phase != "dead" else (error or "the engine stopped"),
    }
