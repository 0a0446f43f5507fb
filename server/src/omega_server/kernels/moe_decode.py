"""A fused MoE path for decoding: the experts of a few tokens as two Triton GEMV kernels.

At decode time a MoE layer sees a handful of tokens (the running batch), each routed to ``top_k``
experts. transformers' ``grouped_mm`` experts sort the (token, expert) pairs, gather the hidden
states, run a grouped GEMM over all experts, the activation, a second grouped GEMM, the routing
weights and an un-permute: about a dozen kernels per layer, and on the H100 the two grouped GEMMs
alone took about twice the time of the bytes they read (bench/README.md, the Omega profile).

Here each (token, expert) pair reads its expert's weights directly, by index, with no sort and no
gather: one kernel computes ``silu(x @ gate.T) * (x @ up.T)`` for every pair, a second computes the
down projection times the routing weight, and one sum adds the ``top_k`` rows of each token. Pairs
that share an expert read its weights twice (mostly from L2), so this pays only while the pairs are
few; above ``MAX_PAIRS`` the layer uses ``grouped_mm`` as before. Prefill always does.

The rounding follows the eager experts: gate and up are rounded to the weight dtype before the
activation, the down projection before the routing weight, and the ``top_k`` rows are summed in
float32 and rounded once.

``install(model)`` registers the implementation under ``EXPERTS_IMPLEMENTATION`` and selects it for
the model when it can run: a CUDA model with Triton, or any device under ``TRITON_INTERPRET=1``
(how the CPU tests run the real kernels).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from omega_server.kernels.tritonrt import available, tl, triton

log = logging.getLogger(__name__)

EXPERTS_IMPLEMENTATION = "omega_fused_decode"
MAX_PAIRS = 64  # (token, expert) pairs: batch 8 at top_k 8

if triton is not None:

    @triton.jit
    def _gate_up_act_kernel(
        x_ptr,
        w_ptr,
        ids_ptr,
        out_ptr,
        stride_x,
        stride_we,
        stride_wn,
        stride_out,
        HIDDEN: tl.constexpr,
        INTER: tl.constexpr,
        TOP_K: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """out[pair, n] = silu(x[token] . gate[expert, n]) * (x[token] . up[expert, n])."""
        pair = tl.program_id(0)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < INTER
        token = pair // TOP_K
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        gate_rows = w_ptr + expert * stride_we + offs_n[:, None] * stride_wn
        up_rows = gate_rows + INTER * stride_wn
        acc_gate = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, HIDDEN, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < HIDDEN
            x = tl.load(x_ptr + token * stride_x + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            ok = n_ok[:, None] & k_ok[None, :]
            w_gate = tl.load(gate_rows + offs_k[None, :], mask=ok, other=0.0).to(tl.float32)
            w_up = tl.load(up_rows + offs_k[None, :], mask=ok, other=0.0).to(tl.float32)
            acc_gate += tl.sum(w_gate * x[None, :], axis=1)
            acc_up += tl.sum(w_up * x[None, :], axis=1)
        dtype = out_ptr.dtype.element_ty
        gate = acc_gate.to(dtype).to(tl.float32)
        up = acc_up.to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32) * up
        tl.store(out_ptr + pair * stride_out + offs_n, act.to(dtype), mask=n_ok)

    @triton.jit
    def _down_kernel(
        a_ptr,
        w_ptr,
        ids_ptr,
        weights_ptr,
        out_ptr,
        stride_a,
        stride_we,
        stride_wn,
        stride_out,
        HIDDEN: tl.constexpr,
        INTER: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """out[pair, n] = routing_weight[pair] * (a[pair] . down[expert, n])."""
        pair = tl.program_id(0)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < HIDDEN
        expert = tl.load(ids_ptr + pair).to(tl.int64)
        rows = w_ptr + expert * stride_we + offs_n[:, None] * stride_wn
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, INTER, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < INTER
            a = tl.load(a_ptr + pair * stride_a + offs_k, mask=k_ok, other=0.0).to(tl.float32)
            w = tl.load(rows + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(w * a[None, :], axis=1)
        dtype = out_ptr.dtype.element_ty
        weight = tl.load(weights_ptr + pair).to(tl.float32)
        out = acc.to(dtype).to(tl.float32) * weight
        tl.store(out_ptr + pair * stride_out + offs_n, out.to(dtype), mask=n_ok)


# (BLOCK_N, BLOCK_K, num_warps) per kernel: the best of `python -m bench.decode_kernels --sweep` on the
# H100 at the Omega shape (bench/README.md, run 8): 39 us per layer at 1 token (grouped_mm 106 us),
# 103 us at 4 tokens (184), 182 us at 8 tokens (270)
GATE_UP_BLOCKS = (8, 256, 4)
DOWN_BLOCKS = (8, 256, 4)


def fused_experts(
    hidden_states: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """The MoE experts' output for ``hidden_states`` (tokens, hidden).

    ``gate_up_proj`` is (experts, 2 * inter, hidden) with the gate rows first, ``down_proj`` is
    (experts, hidden, inter), ``top_k_index`` / ``top_k_weights`` are (tokens, top_k).
    """
    assert triton is not None
    tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[-1]
    inter = down_proj.shape[-1]
    pairs = tokens * top_k
    dtype = gate_up_proj.dtype
    x = hidden_states.to(dtype).contiguous()
    ids = top_k_index.reshape(-1).contiguous()
    weights = top_k_weights.reshape(-1).contiguous()
    gate_up_proj = gate_up_proj.contiguous()
    down_proj = down_proj.contiguous()
    act = torch.empty(pairs, inter, dtype=dtype, device=x.device)
    block_n, block_k, warps = GATE_UP_BLOCKS
    _gate_up_act_kernel[(pairs, triton.cdiv(inter, block_n))](
        x,
        gate_up_proj,
        ids,
        act,
        x.stride(0),
        gate_up_proj.stride(0),
        gate_up_proj.stride(1),
        act.stride(0),
        HIDDEN=hidden,
        INTER=inter,
        TOP_K=top_k,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
    )
    out = torch.empty(pairs, hidden, dtype=dtype, device=x.device)
    block_n, block_k, warps = DOWN_BLOCKS
    _down_kernel[(pairs, triton.cdiv(hidden, block_n))](
        act,
        down_proj,
        ids,
        weights,
        out,
        act.stride(0),
        down_proj.stride(0),
        down_proj.stride(1),
        out.stride(0),
        HIDDEN=hidden,
        INTER=inter,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
    )
    summed = out.view(tokens, top_k, hidden).sum(dim=1, dtype=torch.float32)
    return summed.to(hidden_states.dtype)


def supports(experts: Any) -> bool:
    """The experts module has the layout and activation the kernels implement."""
    gate_up = getattr(experts, "gate_up_proj", None)
    down = getattr(experts, "down_proj", None)
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor):
        return False
    if getattr(experts, "is_transposed", False) or getattr(experts, "has_bias", False):
        return False
    if not getattr(experts, "has_gate", True) or getattr(experts, "has_post_expert_norm", False):
        return False
    act = getattr(getattr(experts, "config", None), "hidden_act", None)
    experts_count, two_inter, hidden = gate_up.shape
    return act == "silu" and down.shape == (experts_count, hidden, two_inter // 2)


def experts_forward(
    self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """transformers' experts interface: the fused kernels for a few tokens, else ``grouped_mm``.

    ``install`` selects it only for models whose experts all pass ``supports``, so the layout is not
    checked again here, on the hot path.
    """
    pairs = top_k_index.numel()
    if pairs <= MAX_PAIRS and available(hidden_states.device):
        return fused_experts(hidden_states, self.gate_up_proj, self.down_proj, top_k_index, top_k_weights)
    return _fallback()(self, hidden_states, top_k_index, top_k_weights)


def _fallback() -> Any:
    from transformers.integrations.moe import grouped_mm_experts_forward

    return grouped_mm_experts_forward


def _experts_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if type(m).__name__.endswith("Experts") and hasattr(m, "down_proj")]


def experts_implementation(model: Any) -> str | None:
    """The experts path a MoE model runs (None for a dense model)."""
    if not _experts_modules(model):
        return None
    return getattr(model.config, "_experts_implementation", None)


def install(model: Any) -> bool:
    """Use the fused decode experts for ``model`` when it is a MoE model they can run; True if so."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_experts_implementation", None) != "grouped_mm":
        return False  # not a MoE model with the experts interface, or an implementation chosen on purpose
    device = next(model.parameters()).device
    if not available(device):
        return False
    experts = _experts_modules(model)
    if not experts or not all(supports(m) for m in experts):
        return False
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(EXPERTS_IMPLEMENTATION, experts_forward)
    config._experts_implementation = EXPERTS_IMPLEMENTATION
    log.info("MoE decode: fused Triton experts for up to %d (token, expert) pairs", MAX_PAIRS)
    return True
