"""One-token decode attention on the static slot cache through flash-attn 2's ``flash_attn_with_kvcache``.

transformers' ``flash_attention_2`` function takes only a 2D padding mask, so on its own it cannot run
over ``kvslots.SlotCache`` (rows of different lengths in one preallocated buffer). flash-attn has the
kernel for exactly that: ``flash_attn_with_kvcache(q, k_cache, v_cache, k=new_k, v=new_v,
cache_seqlens=...)`` writes each row's new key/value at column ``cache_seqlens[row]`` of the cache and
attends to columns ``[0, cache_seqlens[row]]``, with the key/value heads unexpanded (native GQA) and
no mask. This is what vLLM's and SGLang's flash-attn backends run for decoding.

How it is wired (the same shape as ``gqa_decode`` for sdpa):

- ``install()`` registers ``decode_attention`` as the process's ``flash_attention_2`` function.
- ``StaticRunner`` marks its ``SlotCache`` ``flash = True`` (its ``update`` then writes nothing and
  hands the new key/value through) and runs each decode step inside ``slot_decode(cache)``.
- Inside ``slot_decode``, a call with one query token from a module with a ``layer_idx`` goes to
  ``flash_attn_with_kvcache`` on that layer's slot buffers (``(slots, kv_heads, width, dim)``, read
  as ``(batch, width, kv_heads, dim)`` through a transposed view: flash-attn takes any batch, row and
  head strides), with ``cache.seqlens`` (int32, one per slot, at a fixed address) as ``cache_seqlens``.
  Every tensor has a fixed address, so the step is captured in the same CUDA graphs as sdpa's.
- Every other call (prefill, the vision tower's varlen attention over ``cu_seqlens``, the dynamic
  cache) goes to transformers' own ``flash_attention_2`` function unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: the attention backend whose static decode step runs ``decode_attention``
BACKEND = "flash_attention_2"
#: the flash-attn kernels the flash backend runs (reported on /health ``decode.flash_kernels``):
#: decoding on the slot cache; prefill (transformers unpads the right-padded prompts) and the vision
#: tower (over the images' ``cu_seqlens``) through the varlen kernel
KERNELS: tuple[str, ...] = ("flash_attn_with_kvcache", "flash_attn_varlen_func")

_ORIGINAL: Any = None
_ACTIVE: Any = None  # the SlotCache whose decode step is being run (traced or captured)
_KERNEL: Callable[..., torch.Tensor] | None = None


@contextlib.contextmanager
def slot_decode(cache: Any) -> Iterator[None]:
    """Run the one-token attention calls inside on ``cache``'s slot buffers (a ``kvslots.SlotCache``)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, cache
    try:
        yield
    finally:
        _ACTIVE = previous


def kernel() -> Callable[..., torch.Tensor]:
    """``flash_attn.flash_attn_with_kvcache`` (imported once; tests may set ``_KERNEL`` to a stand-in)."""
    global _KERNEL
    if _KERNEL is None:
        from flash_attn import flash_attn_with_kvcache

        _KERNEL = flash_attn_with_kvcache
    return _KERNEL


def window(kwargs: dict[str, Any]) -> tuple[int, int]:
    """flash-attn's ``window_size`` for transformers' ``sliding_window`` kwarg ((-1, -1): none)."""
    sliding = kwargs.get("sliding_window")
    if sliding is None or sliding <= 0:
        return (-1, -1)
    return (int(sliding) - 1, int(sliding) - 1)


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface (same arguments and output as its ``flash_attention_2``).

    On the slot cache: ``query`` (batch, heads, 1, dim), ``key``/``value`` the new token's
    (batch, kv_heads, 1, dim), which the kernel writes into the slots; ``attention_mask`` is ignored
    (``cache.seqlens`` says which columns each row reads). Returns (batch, 1, heads, dim).
    """
    cache = _ACTIVE
    layer = getattr(module, "layer_idx", None)
    if cache is None or layer is None or query.shape[2] != 1 or not getattr(cache, "flash", False):
        return _original()(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    batch, width = query.shape[0], cache.view[1]
    k_cache = cache.keys[layer][:batch, :, :width].transpose(1, 2)
    v_cache = cache.values[layer][:batch, :, :width].transpose(1, 2)
    out = kernel()(
        query.transpose(1, 2),
        k_cache,
        v_cache,
        k=key.transpose(1, 2),
        v=value.transpose(1, 2),
        cache_seqlens=cache.seqlens[:batch],
        softmax_scale=scaling,
        causal=True,
        window_size=window(kwargs),
        softcap=float(kwargs.get("softcap") or 0.0),
    )
    return out, None


def _original() -> Any:
    global _ORIGINAL
    if _ORIGINAL is None:
        from transformers.integrations.flash_attention import flash_attention_forward

        _ORIGINAL = flash_attention_forward
    return _ORIGINAL


def install(enabled: bool = True) -> None:
    """Make ``decode_attention`` the process's ``flash_attention_2`` function, or (``enabled=False``)
    give it back to transformers' own. Idempotent; calls outside ``slot_decode`` are unchanged."""
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register("flash_attention_2", decode_attention if enabled else _original())


def installed() -> bool:
    """Whether ``flash_attention_2`` attention currently resolves to ``decode_attention``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return bool(ALL_ATTENTION_FUNCTIONS.get("flash_attention_2") is decode_attention)
