"""The fused MoE decode experts (omega_server.kernels.moe_decode): the real Triton kernels, run by Triton's
interpreter on the CPU (the GPU run is bench/moe_kernels.py on the accelerator machine).

Triton reads ``TRITON_INTERPRET`` when the kernels are defined, so these checks run in a child
process that sets it before importing anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omega_server.engine import Engine, EngineConfig
from omega_server.kernels import moe_decode

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]


def interpreted(code: str, *args: str) -> dict[str, object]:
    """Run ``code`` under TRITON_INTERPRET=1; it prints one JSON object last."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


KERNEL_CHECK = """
import copy, json, torch
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeTextConfig
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextExperts
from omega_server.kernels import moe_decode

assert moe_decode.available(torch.device("cpu"))  # the interpreter runs the kernels on the CPU
cfg = Qwen3VLMoeTextConfig(hidden_size=72, moe_intermediate_size=40, num_experts=16,
                           num_experts_per_tok=4, hidden_act="silu")
cfg._experts_implementation = "eager"
torch.manual_seed(0)
experts = Qwen3VLMoeTextExperts(cfg)
with torch.no_grad():
    experts.gate_up_proj.normal_(0, 0.2)
    experts.down_proj.normal_(0, 0.2)
exact = copy.deepcopy(experts).double()
out = {"supports": moe_decode.supports(experts), "f32": [], "bf16": []}
for tokens in (1, 3, 16):  # 16 tokens x 4 = 64 pairs, the most the fused path takes
    x = torch.randn(tokens, 72)
    probs = torch.softmax(torch.randn(tokens, 16), -1)
    w, idx = probs.topk(4, -1)
    w = w / w.sum(-1, keepdim=True)
    ref = experts(x, idx, w)
    got = moe_decode.fused_experts(x, experts.gate_up_proj, experts.down_proj, idx, w)
    out["f32"].append(((got - ref).norm() / ref.norm()).item())
    # bf16 against a float64 reference; both paths round, so compare their errors
    xb, wb = x.bfloat16(), w.bfloat16()
    eb = copy.deepcopy(experts).bfloat16()
    ref64 = exact(xb.double(), idx, wb.double())
    fused = moe_decode.fused_experts(xb, eb.gate_up_proj, eb.down_proj, idx, wb)
    eager = eb(xb, idx, wb)
    rel = lambda t: ((t.double() - ref64).norm() / ref64.norm()).item()
    out["bf16"].append([rel(fused), rel(eager), str(fused.dtype)])
print(json.dumps(out))
"""


def test_fused_kernels_compute_the_eager_experts() -> None:
    result = interpreted(KERNEL_CHECK)
    assert result["supports"] is True
    f32 = result["f32"]
    assert isinstance(f32, list) and len(f32) == 3
    assert all(err < 1e-5 for err in f32), f32  # float32: the same sums in another order
    bf16 = result["bf16"]
    assert isinstance(bf16, list)
    for fused, eager, dtype in bf16:
        assert dtype == "torch.bfloat16"
        # Triton's interpreter truncates float32 -> bfloat16 where the GPU rounds to nearest, and the
        # kernels round six times (as the eager path does), so interpreted they err about 3x the eager
        # path (measured 0.017 vs 0.005); a wrong index or a missed term errs by order 1
        assert eager < 0.01 and fused < 0.03, (fused, eager)


ENGINE_CHECK = """
import json, sys
from omega_server.engine import Engine, EngineConfig
from tests.omega_server.test_engine import chat, reference

path = sys.argv[1]
eng = Engine.load(EngineConfig(model_path=path, attn_impl="sdpa", kv_cache="static", max_batch_size=2))
calls = {"fused": 0}
import omega_server.kernels.moe_decode as md
original = md.fused_experts
def counting(*a, **k):
    calls["fused"] += 1
    return original(*a, **k)
md.fused_experts = counting
req = chat(1, max_tokens=5)
got = [t for o in eng.generate_sync(eng.prepare(req), timeout=300) for t in o.token_ids]
eng.shutdown()
md.fused_experts = original
print(json.dumps({"impl": eng.info.experts_implementation, "got": got, "ref": reference(eng, req),
                  "fused_calls": calls["fused"]}))
"""


def test_engine_decodes_a_moe_model_through_the_fused_kernels(tiny_checkpoint: Callable[[str], Path]) -> None:
    """A tiny Qwen3-VL-MoE served by the engine: greedy tokens equal transformers' generate()."""
    result = interpreted(ENGINE_CHECK, str(tiny_checkpoint("qwen3_vl_moe")))
    assert result["impl"] == moe_decode.EXPERTS_IMPLEMENTATION
    fused_calls = result["fused_calls"]
    assert isinstance(fused_calls, int) and fused_calls > 0  # prefill + decode steps went through it
    ref = result["ref"]
    assert isinstance(ref, list) and ref
    assert result["got"][: len(ref)] == ref


def test_without_triton_interpretation_the_cpu_keeps_grouped_mm(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """On a CPU (no interpreter) the kernels cannot run: the model keeps transformers' experts."""
    assert not moe_decode.available(torch.device("cpu"))
    eng = Engine.load(EngineConfig(model_path=str(tiny_checkpoint("qwen3_vl_moe")), attn_impl="sdpa"))
    try:
        assert eng.info.experts_implementation == "grouped_mm"
    finally:
        eng.shutdown()
    dense = Engine.load(EngineConfig(model_path=str(tiny_checkpoint("qwen2_5_vl")), attn_impl="sdpa"))
    try:
        assert dense.info.experts_implementation is None
    finally:
        dense.shutdown()


def test_many_pairs_and_unsupported_layouts_use_grouped_mm() -> None:
    """Above MAX_PAIRS, or for a layout the kernels do not implement, the experts are transformers'."""
    from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeTextConfig
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextExperts

    cfg = Qwen3VLMoeTextConfig(hidden_size=16, moe_intermediate_size=8, num_experts=4, num_experts_per_tok=2)
    cfg._experts_implementation = "grouped_mm"
    experts = Qwen3VLMoeTextExperts(cfg)
    with torch.no_grad():
        experts.gate_up_proj.normal_()
        experts.down_proj.normal_()
    assert moe_decode.supports(experts)
    x = torch.randn(40, 16)  # 80 pairs > MAX_PAIRS
    w, idx = torch.softmax(torch.randn(40, 4), -1).topk(2, -1)
    torch.testing.assert_close(moe_decode.experts_forward(experts, x, idx, w), experts(x, idx, w))
    experts.is_transposed = True
    assert not moe_decode.supports(experts)
    gelu = Qwen3VLMoeTextConfig(hidden_size=16, moe_intermediate_size=8, num_experts=4, hidden_act="gelu")
    assert not moe_decode.supports(Qwen3VLMoeTextExperts(gelu))


def test_engine_with_fast_decode_off_keeps_transformers_paths(tiny_checkpoint: Callable[[str], Path]) -> None:
    eng = Engine.load(
        EngineConfig(model_path=str(tiny_checkpoint("qwen3_vl_moe")), attn_impl="sdpa", fast_decode=False)
    )
    try:
        assert not eng.info.gqa_decode
        assert eng.info.experts_implementation == "grouped_mm"
    finally:
        eng.shutdown()
        from omega_server.kernels import gqa_decode

        gqa_decode.install(True)
