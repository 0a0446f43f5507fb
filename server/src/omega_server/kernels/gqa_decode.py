"""SDPA for one query token without copying the key/value heads (grouped-query attention).

transformers' ``sdpa`` attention gives PyTorch's kernel ``enable_gqa`` only when there is no mask; with
the 4D mask that the slot cache's decode step passes, it expands the key/value heads to the query
heads (``repeat_kv``) first. For Omega17VLExp (32 query heads, 4 key/value heads) that writes and
reads eight copies of the whole cache at every step in every layer; at batch 64 and a 1k context it
is most of the decode step's bytes. (Newer transformers releases pack the heads in eager mode, but not
under torch.compile.)

With one query token, the ``G`` query heads that share a key/value head can instead be read as ``G``
query positions of that head: the query becomes (batch, kv_heads, G, dim) and attends to the
unexpanded cache with the same mask, which broadcasts over the heads. The arithmetic is the same
attention; only the copies are gone. Where Triton kernels run (a GPU), the packed call goes to
``splitk_attention`` (flash-decoding: the columns split over many thread blocks); elsewhere, and for
shapes the kernel does not take, to PyTorch's SDPA on the packed query.

transformers looks attention functions up by name in one process-wide table, so ``install()``
registers ``decode_attention`` as the process's ``sdpa`` function, and each model decides for
itself: ``enable(model, on)`` marks its attention modules (``kernels.install`` does it for every
loaded model), and a module marked off goes to transformers' own SDPA function. For a marked-on (or
unmarked) module, a call with one query token and grouped heads takes the packed path; every other
call (prefill, the vision tower, dropout, a position bias) goes to transformers' own function
unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from omega_server.kernels import splitk_attention

_ORIGINAL: Any = None

#: the attribute ``enable`` sets on a model's attention modules (absent: packed, as before any marking)
ENABLED = "omega_gqa_decode"


def pack_query(query: torch.Tensor, groups: int) -> torch.Tensor:
    """(batch, heads, 1, dim) -> (batch, heads // groups, groups, dim): a group's heads as positions."""
    batch, heads, _, dim = query.shape
    return query.reshape(batch, heads // groups, groups, dim)


def pack_mask(mask: torch.Tensor | None, groups: int) -> torch.Tensor | None:
    """A (batch, 1 | heads, 1, width) mask for the packed query (a per-head one is regrouped)."""
    if mask is None or mask.shape[1] == 1:
        return mask
    batch, heads, _, width = mask.shape
    return mask.reshape(batch, heads // groups, groups, width)


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
    """transformers' attention interface (same arguments and output as its ``sdpa`` function)."""
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    packable = (
        getattr(module, ENABLED, True)
        and query.shape[2] == 1
        and groups > 1
        and key.shape[1] * groups == query.shape[1]
        and dropout == 0.0
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
        and not kwargs.get("output_attentions", False)
        and (attention_mask is None or attention_mask.dim() == 4)
    )
    if not packable:
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
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)
    if splitk_attention.supported(query, key, mask) and value.stride(-1) == 1:
        assert mask is not None
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return splitk_attention.attention(query, key, value, mask, scale), None
    return packed_sdpa(query, key, value, mask, groups, scaling), None


def packed_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    groups: int,
    scaling: float | None = None,
) -> torch.Tensor:
    """PyTorch's SDPA on the packed query: (batch, heads, 1, dim) in, (batch, 1, heads, dim) out."""
    batch, heads, _, dim = query.shape
    out = F.scaled_dot_product_attention(
        pack_query(query, groups),
        key,
        value,
        attn_mask=pack_mask(mask, groups),
        dropout_p=0.0,
        scale=scaling,
        is_causal=False,
    )
    # (batch, kv_heads, groups, dim) -> (batch, 1, heads, dim), the layout sdpa_attention_forward returns
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous()


def _original() -> Any:
    global _ORIGINAL
    if _ORIGINAL is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _ORIGINAL = sdpa_attention_forward
    return _ORIGINAL


def enable(model: Any, on: bool) -> None:
    """Mark ``model``'s attention modules: packed one-token attention (``on``) or transformers' own."""
    for module in model.modules():
        if hasattr(module, "num_key_value_groups"):
            setattr(module, ENABLED, on)


def install(enabled: bool = True) -> None:
    """Make ``decode_attention`` the process's ``sdpa`` attention function, or (``enabled=False``)
    give ``sdpa`` back to transformers' own function. Idempotent. Which models pack is ``enable``'s."""
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register("sdpa", decode_attention if enabled else _original())


def installed() -> bool:
    """Whether ``sdpa`` attention currently resolves to ``decode_attention``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return bool(ALL_ATTENTION_FUNCTIONS.get("sdpa") is decode_attention)
