"""The server's Triton kernels compile for the H100 (sm_90) with the shapes the engine launches.

Triton's interpreter (the other CPU tests) runs the kernels' Python; it does not check what only the
compiler checks (globals that are not constexpr, types, shared memory). Triton compiles to a cubin
here, with its own ptxas, and needs no GPU for that.
"""

from __future__ import annotations

from typing import Any

import pytest
from omega_server.kernels import moe_decode, splitk_attention
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile

H100 = GPUTarget("cuda", 90, 32)


def cubin(kernel: Any, pointers: dict[str, str], scalars: dict[str, str], consts: dict[str, Any]) -> bytes:
    signature = {}
    for name in kernel.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*bf16")
        else:
            signature[name] = scalars.get(name, "i32")
    compiled = compile(ASTSource(fn=kernel, signature=signature, constexprs=consts), target=H100)
    binary: bytes = compiled.asm["cubin"]
    return binary


@pytest.mark.parametrize("groups", [8, 7])  # Omega17VLExp (32/4 heads), Qwen2.5-VL-7B (28/4)
@pytest.mark.parametrize("block", [64, 512])
def test_splitk_attention_kernels_compile(groups: int, block: int) -> None:
    shape = {"KV_HEADS": 4, "GROUPS": groups, "GROUPS_PAD": 16, "DIM": 128}
    fp32 = {"acc_ptr": "*fp32", "stats_ptr": "*fp32"}
    partial = cubin(
        splitk_attention._partial_kernel,
        fp32,
        {"scale": "fp32"},
        {**shape, "BLOCK_W": block, "SPLITS": 1088 // block + 1},
    )
    merge = cubin(splitk_attention._merge_kernel, fp32, {}, {**shape, "SPLITS": 1088 // block + 1})
    assert partial and merge


def test_fused_moe_kernels_compile() -> None:
    """The Omega17VLExp expert shapes with the engine's block sizes."""
    n, k, _ = moe_decode.GATE_UP_BLOCKS
    gate_up = cubin(
        moe_decode._gate_up_act_kernel,
        {"ids_ptr": "*i64"},
        {},
        {"HIDDEN": 2048, "INTER": 768, "TOP_K": 8, "BLOCK_N": n, "BLOCK_K": k},
    )
    n, k, _ = moe_decode.DOWN_BLOCKS
    down = cubin(
        moe_decode._down_kernel,
        {"ids_ptr": "*i64"},
        {},
        {"HIDDEN": 2048, "INTER": 768, "BLOCK_N": n, "BLOCK_K": k},
    )
    assert gate_up and down
