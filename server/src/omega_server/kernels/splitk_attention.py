"""Split-K attention for one query token per sequence (flash-decoding), as two Triton kernels.

PyTorch's SDPA kernels parallelize over (batch, head) and query blocks; a decode step has one query
token, so at batch 1 with 4 key/value heads the packed attention of ``gqa_decode`` runs a handful of
thread blocks on a 132-SM GPU: 28 us per layer on the H100 for a 1k-column cache, 70-80 GB/s
(bench/README.md, run 8). Here the key/value columns are split into blocks of ``BLOCK_W``, one
program per (sequence, key/value head, block), each computing the softmax-weighted sum of its block
for the ``G`` query heads of its group with local max and sum; a second kernel merges the blocks.

The mask is the slot cache's additive (batch, 1, 1, width) mask; masked columns add a large negative
number and so get weight 0 (a block with every column masked contributes nothing to the merge).
"""

from __future__ import annotations

import torch

from omega_server.kernels.tritonrt import available, tl, triton

if triton is not None:
    NEG = tl.constexpr(-1.0e30)  # scores are clamped here: a masked column's weight is exp(NEG - max) = 0

    @triton.jit
    def _partial_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        mask_ptr,
        acc_ptr,
        stats_ptr,
        width,
        scale,
        stride_qb,
        stride_qh,
        stride_kb,
        stride_kh,
        stride_kw,
        stride_vb,
        stride_vh,
        stride_vw,
        stride_mb,
        KV_HEADS: tl.constexpr,
        GROUPS: tl.constexpr,
        GROUPS_PAD: tl.constexpr,
        DIM: tl.constexpr,
        BLOCK_W: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        row = tl.program_id(0)  # batch * KV_HEADS + kv head
        split = tl.program_id(1)
        b = row // KV_HEADS
        h = row % KV_HEADS
        offs_g = tl.arange(0, GROUPS_PAD)
        offs_d = tl.arange(0, DIM)
        offs_w = split * BLOCK_W + tl.arange(0, BLOCK_W)
        g_ok = offs_g < GROUPS
        w_ok = offs_w < width
        q = tl.load(
            q_ptr + b * stride_qb + (h * GROUPS + offs_g)[:, None] * stride_qh + offs_d[None, :],
            mask=g_ok[:, None],
            other=0.0,
        )
        k = tl.load(
            k_ptr + b * stride_kb + h * stride_kh + offs_w[:, None] * stride_kw + offs_d[None, :],
            mask=w_ok[:, None],
            other=0.0,
        )
        scores = tl.dot(q, tl.trans(k)).to(tl.float32) * scale  # (GROUPS_PAD, BLOCK_W)
        bias = tl.load(mask_ptr + b * stride_mb + offs_w, mask=w_ok, other=NEG).to(tl.float32)
        scores = tl.maximum(scores + bias[None, :], NEG)
        top = tl.max(scores, axis=1)
        p = tl.exp(scores - top[:, None])
        total = tl.sum(p, axis=1)
        v = tl.load(
            v_ptr + b * stride_vb + h * stride_vh + offs_w[:, None] * stride_vw + offs_d[None, :],
            mask=w_ok[:, None],
            other=0.0,
        )
        acc = tl.dot(p.to(v.dtype), v).to(tl.float32)  # (GROUPS_PAD, DIM)
        base = (row * SPLITS + split) * GROUPS_PAD
        tl.store(acc_ptr + (base + offs_g)[:, None] * DIM + offs_d[None, :], acc)
        tl.store(stats_ptr + (base + offs_g) * 2, top)
        tl.store(stats_ptr + (base + offs_g) * 2 + 1, total)

    @triton.jit
    def _merge_kernel(
        acc_ptr,
        stats_ptr,
        out_ptr,
        stride_ob,
        stride_oh,
        KV_HEADS: tl.constexpr,
        GROUPS: tl.constexpr,
        GROUPS_PAD: tl.constexpr,
        DIM: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        row = tl.program_id(0)
        b = row // KV_HEADS
        h = row % KV_HEADS
        offs_g = tl.arange(0, GROUPS_PAD)
        offs_d = tl.arange(0, DIM)
        top = tl.full((GROUPS_PAD,), NEG, dtype=tl.float32)
        total = tl.zeros((GROUPS_PAD,), dtype=tl.float32)
        acc = tl.zeros((GROUPS_PAD, DIM), dtype=tl.float32)
        for split in range(SPLITS):
            base = (row * SPLITS + split) * GROUPS_PAD
            m = tl.load(stats_ptr + (base + offs_g) * 2)
            s = tl.load(stats_ptr + (base + offs_g) * 2 + 1)
            a = tl.load(acc_ptr + (base + offs_g)[:, None] * DIM + offs_d[None, :])
            new_top = tl.maximum(top, m)
            old_w = tl.exp(top - new_top)
            new_w = tl.exp(m - new_top)
            total = total * old_w + s * new_w
            acc = acc * old_w[:, None] + a * new_w[:, None]
            top = new_top
        out = acc / total[:, None]
        g_ok = offs_g < GROUPS
        tl.store(
            out_ptr + b * stride_ob + (h * GROUPS + offs_g)[:, None] * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=g_ok[:, None],
        )


def supported(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Shapes the kernels take: a power-of-two head dim of 16-256, one additive mask row per sequence."""
    dim = query.shape[-1]
    if triton is None or dim < 16 or dim > 256 or dim & (dim - 1):
        return False
    if not available(query.device) or key.stride(-1) != 1 or query.stride(-1) != 1:
        return False
    if mask is None:
        return False
    return (
        mask.dim() == 4
        and mask.shape[1] == 1
        and mask.shape[2] == 1
        and mask.dtype.is_floating_point
        and mask.stride(-1) == 1
    )


def block_width(rows: int, width: int) -> int:
    """Columns per program: 128, or 64 where 128 leaves fewer than two programs per SM (132 SMs), then
    wider until there are at most ``MAX_SPLITS`` blocks (the merge walks them one after another).

    On the H100 (bench/README.md, run 10), blocks of 16 columns at batch 1 left the merge walking 68
    blocks: 35 us per layer, slower than PyTorch's SDPA on the packed heads (28 us).
    """
    block = 128 if rows * triton.cdiv(width, 128) >= 264 else 64
    while triton.cdiv(width, block) > MAX_SPLITS and block < 512:
        block *= 2
    return block


MAX_SPLITS = 32


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One-token attention: query (batch, heads, 1, dim), key/value (batch, kv_heads, width, dim),
    mask (batch, 1, 1, width) additive. Returns (batch, 1, heads, dim) in the query's dtype."""
    assert triton is not None
    batch, heads, _, dim = query.shape
    kv_heads, width = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    groups_pad = max(16, triton.next_power_of_2(groups))
    rows = batch * kv_heads
    block = block_width(rows, width)
    splits = triton.cdiv(width, block)
    acc = torch.empty(rows * splits * groups_pad, dim, dtype=torch.float32, device=query.device)
    stats = torch.empty(rows * splits * groups_pad, 2, dtype=torch.float32, device=query.device)
    out = torch.empty(batch, 1, heads, dim, dtype=query.dtype, device=query.device)
    _partial_kernel[(rows, splits)](
        query,
        key,
        value,
        mask,
        acc,
        stats,
        width,
        scale,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        value.stride(0),
        value.stride(1),
        value.stride(2),
        mask.stride(0),
        KV_HEADS=kv_heads,
        GROUPS=groups,
        GROUPS_PAD=groups_pad,
        DIM=dim,
        BLOCK_W=block,
        SPLITS=splits,
        num_warps=4,
    )
    _merge_kernel[(rows,)](
        acc,
        stats,
        out,
        out.stride(0),
        out.stride(2),
        KV_HEADS=kv_heads,
        GROUPS=groups,
        GROUPS_PAD=groups_pad,
        DIM=dim,
        SPLITS=splits,
        num_warps=4,
    )
    return out
