"""How many KV slots fit: bytes per cached token from the model config, and the slots free memory allows.

The static slot cache (``kvslots.SlotCache``) preallocates ``slots x MAX_MODEL_LENGTH`` tokens of
keys and values for every layer. ``plan_slots`` is the one decision of how many slots that is: the
device memory granted to the cache is ``total x GPU_MEMORY_UTILIZATION`` minus what is in use after
the weights are loaded and minus the activation peak of a profiled prefill; ``MAX_BATCH_SIZE`` slots
when they fit, fewer when they do not (the log and /health say so), and ``KVCacheTooSmallError``
(a fatal start-up error, kind ``kv_cache_too_small``) when not even one full-length sequence fits.

``plan_slots`` and ``bytes_per_token`` are pure (no torch): the bench prints the slot count for a
model shape and a device size with them. ``measure_cuda`` takes the numbers from the device around
a profiling callable; on the CPU, or in tests, the caller passes its own ``DeviceMemory``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omega_server.engine.errors import KVCacheTooSmallError

GIB = 1 << 30


@dataclass(frozen=True)
class DeviceMemory:
    """The device's memory, in bytes: its size, what is in use (weights, CUDA context, other
    processes) with the allocator's cache emptied, and the extra peak of the profiled prefill."""

    total: int
    used: int
    peak_extra: int = 0


@dataclass(frozen=True)
class KVBudget:
    """The slot count chosen, and the numbers it was chosen from (reported on /health)."""

    slots: int
    requested_slots: int  # MAX_BATCH_SIZE
    max_model_length: int
    bytes_per_token: int  # keys + values of one token over all layers, plus its mask column
    budget_bytes: int  # device memory granted to the KV cache
    utilization: float

    @property
    def token_capacity(self) -> int:
        """Tokens the cache holds in all: slots x MAX_MODEL_LENGTH."""
        return self.slots * self.max_model_length

    @property
    def spare_tokens(self) -> int:
        """Tokens of keys and values the budget holds beyond the slots (the prefix cache's share)."""
        spare = self.budget_bytes - self.token_capacity * self.bytes_per_token
        return max(spare, 0) // self.bytes_per_token

    @property
    def lowered(self) -> bool:
        """Fewer slots than MAX_BATCH_SIZE asked for."""
        return self.slots < self.requested_slots

    def describe(self) -> str:
        """One log line."""
        what = (
            f"lowered from MAX_BATCH_SIZE={self.requested_slots}: "
            f"{self.requested_slots} x MAX_MODEL_LENGTH={self.max_model_length} does not fit"
            if self.lowered
            else f"MAX_BATCH_SIZE={self.requested_slots} x MAX_MODEL_LENGTH={self.max_model_length} fits"
        )
        return (
            f"KV cache: {self.slots} slots, {self.token_capacity} tokens, "
            f"{self.slots * self.max_model_length * self.bytes_per_token / GIB:.2f} GiB of "
            f"{self.budget_bytes / GIB:.2f} GiB granted (GPU_MEMORY_UTILIZATION={self.utilization}); {what}"
        )


def text_config(config: Any) -> Any:
    """The text decoder's config of a (vision-language) model config."""
    get = getattr(config, "get_text_config", None)
    if callable(get):
        return get()
    return getattr(config, "text_config", None) or config


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Bytes the slot cache holds per token: keys and values of every decoder layer, plus the mask.

    ``config`` is a transformers config (its text config is used) or a plain dict of text-config
    keys (``num_hidden_layers``, ``num_key_value_heads``, ``head_dim`` or ``hidden_size`` /
    ``num_attention_heads``).
    """
    text = config if isinstance(config, dict) else text_config(config)
    layers = int(_get(text, "num_hidden_layers"))
    heads = int(_get(text, "num_attention_heads"))
    kv_heads = int(_get(text, "num_key_value_heads") or heads)
    head_dim = int(_get(text, "head_dim") or int(_get(text, "hidden_size")) // heads)
    return 2 * layers * kv_heads * head_dim * dtype_bytes + dtype_bytes


def plan_slots(
    *,
    bytes_per_token: int,
    memory: DeviceMemory,
    utilization: float,
    max_batch_size: int,
    max_model_length: int,
) -> KVBudget:
    """The slot count for the KV cache; raises ``KVCacheTooSmallError`` when not one slot fits."""
    if not 0 < utilization <= 1:
        raise ValueError(f"GPU_MEMORY_UTILIZATION must be in (0, 1], got {utilization}")
    budget = int(memory.total * utilization) - memory.used - memory.peak_extra
    per_slot = bytes_per_token * max_model_length
    slots = min(max_batch_size, max(budget, 0) // per_slot)
    if slots < 1:
        raise KVCacheTooSmallError(
            f"one sequence of MAX_MODEL_LENGTH={max_model_length} tokens needs {per_slot / GIB:.2f} GiB of "
            f"KV cache, but only {max(budget, 0) / GIB:.2f} GiB is left of "
            f"{memory.total / GIB:.2f} GiB x GPU_MEMORY_UTILIZATION={utilization} after the weights and "
            f"the warm-up peak ({memory.used / GIB:.2f} + {memory.peak_extra / GIB:.2f} GiB); lower "
            "MAX_MODEL_LENGTH, raise GPU_MEMORY_UTILIZATION, or use a larger GPU"
        )
    return KVBudget(
        slots=int(slots),
        requested_slots=max_batch_size,
        max_model_length=max_model_length,
        bytes_per_token=bytes_per_token,
        budget_bytes=budget,
        utilization=utilization,
    )


def measure_cuda(device: Any, profile: Callable[[], None]) -> DeviceMemory:
    """The device's memory after running ``profile`` (a prefill): in use with the allocator's cache
    emptied, and the allocation peak ``profile`` reached above what was allocated before it."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    profile()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    return DeviceMemory(total=int(total), used=int(total - free), peak_extra=max(int(peak), 0))
