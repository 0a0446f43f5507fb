"""Split-K one-token attention (omega_server.kernels.splitk_attention): the real Triton kernels, run by Triton's
interpreter on the CPU, against PyTorch's SDPA on the repeated heads."""

from __future__ import annotations

import pytest
import torch
from omega_server.kernels import splitk_attention

from tests.omega_server.test_moe_decode import interpreted

pytestmark = pytest.mark.timeout(600)

CHECK = """
import json, torch
from torch.nn import functional as F
from omega_server.kernels import gqa_decode, splitk_attention
from types import SimpleNamespace

def reference(q, k, v, mask, scale):
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double(), scale=scale)
    return out.transpose(1, 2)

results = []
torch.manual_seed(0)
for batch, heads, kv_heads, dim, width, dtype in [
    (1, 8, 1, 16, 40, torch.float32),    # one block of 16 columns and a partial one
    (3, 28, 4, 32, 200, torch.float32),  # 7 query heads per group (Qwen2.5-VL-7B), padded to 16
    (2, 32, 4, 16, 77, torch.float16),  # bf16 (what the H100 runs): bench/decode_kernels.py checks it
    (2, 4, 2, 64, 300, torch.float32),
]:
    slots, total = batch + 1, width + 24   # the slot cache's buffers are wider and have more rows
    kbuf = torch.randn(slots, kv_heads, total, dim, dtype=dtype)
    vbuf = torch.randn(slots, kv_heads, total, dim, dtype=dtype)
    mbuf = torch.full((slots, 1, 1, total), torch.finfo(dtype).min, dtype=dtype)
    lengths = torch.randint(1, width + 1, (batch,)).tolist()
    lengths[0] = 1                          # one row sees only column 0: every other block fully masked
    for row, n in enumerate(lengths):
        mbuf[row, :, :, :n] = 0
    q = torch.randn(batch, heads, 1, dim, dtype=dtype)
    k, v, mask = kbuf[:batch, :, :width], vbuf[:batch, :, :width], mbuf[:batch, :, :, :width]
    scale = dim ** -0.5
    ok = splitk_attention.supported(q, k, mask)
    got = splitk_attention.attention(q, k, v, mask, scale)
    want = reference(q, k, v, mask, scale)
    err = ((got.double() - want).norm() / want.norm()).item()
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    via, _ = gqa_decode.decode_attention(module, q, k, v, mask, scaling=scale)
    results.append({"supported": ok, "err": err, "shape": list(got.shape), "want": list(want.shape),
                    "dtype": str(got.dtype), "via_decode_attention": torch.equal(via, got),
                    "finite": bool(torch.isfinite(got).all())})
print(json.dumps(results))
"""


def test_splitk_kernels_compute_attention() -> None:
    results = interpreted(CHECK)
    assert isinstance(results, list) and len(results) == 4
    for r in results:
        assert r["supported"] and r["finite"] and r["via_decode_attention"], r
        assert r["shape"] == r["want"], r
        # float32: the same math in another order; float16: rounded operands. (Triton's interpreter
        # multiplies bfloat16 matrices wrongly, so the bf16 check runs on the GPU only.)
        assert r["err"] < (5e-3 if r["dtype"] == "torch.float16" else 1e-5), r


def test_unsupported_inputs_are_refused() -> None:
    """What the kernels do not take goes to PyTorch's SDPA (gqa_decode checks ``supported`` first)."""
    q, k = torch.randn(1, 8, 1, 16), torch.randn(1, 2, 10, 16)
    mask = torch.zeros(1, 1, 1, 10)
    assert not splitk_attention.supported(q, k, mask)  # a CPU tensor, no interpreter
    assert not splitk_attention.supported(q, k, None)
    assert not splitk_attention.supported(torch.randn(1, 8, 1, 24), torch.randn(1, 2, 10, 24), mask)
    assert not splitk_attention.supported(q, k, torch.zeros(1, 8, 1, 10))  # a per-head mask
    assert not splitk_attention.supported(q, k, torch.zeros(1, 1, 1, 10, dtype=torch.bool))


def test_block_width_fills_the_gpu_with_few_blocks_to_merge() -> None:
    assert splitk_attention.block_width(rows=4, width=1088) == 64  # batch 1, 4 key/value heads
    assert splitk_attention.block_width(rows=16, width=1088) == 64
    assert splitk_attention.block_width(rows=256, width=1088) == 128
    assert splitk_attention.block_width(rows=4, width=8192) == 256  # 32 blocks to merge, not 128
    assert splitk_attention.block_width(rows=4, width=65536) == 512
