"""The decode roofline: weight split by name, active experts, KV bytes, and the real shapes' figures."""

from __future__ import annotations

import pytest
import torch

from bench.vlmbench import roofline, shapes


def test_classify_by_module_path() -> None:
    assert roofline.classify("model.visual.blocks.0.attn.qkv.weight") == "vision"
    assert roofline.classify("model.language_model.embed_tokens.weight") == "embedding"
    assert roofline.classify("model.language_model.layers.3.mlp.experts.gate_up_proj") == "experts"
    assert roofline.classify("model.language_model.layers.3.mlp.gate.weight") == "dense"
    assert roofline.classify("model.layers.3.mlp.shared_expert.up_proj.weight") == "dense"
    assert roofline.classify("lm_head.weight") == "dense"
    split = roofline.split_params([("lm_head.weight", 10), ("model.visual.x", 5), ("a.experts.w", 7)])
    assert (split.dense, split.vision, split.experts, split.embedding, split.total) == (10, 5, 7, 0, 22)


def test_expected_experts_hit() -> None:
    assert roofline.expected_experts_hit(128, 8, 1) == pytest.approx(8.0)
    assert roofline.expected_experts_hit(128, 8, 2) == pytest.approx(128 * (1 - (120 / 128) ** 2))
    assert roofline.expected_experts_hit(128, 8, 10_000) == pytest.approx(128.0)
    assert roofline.expected_experts_hit(0, 8, 4) == 0.0


def test_step_bytes_and_tokens_per_s() -> None:
    w = roofline.ParamBytes(dense=1_000, experts=1_600, embedding=500, vision=300)
    step = roofline.decode_step_bytes(
        w, batch=1, context_tokens=10, kv_per_token=4, hidden_size=8, num_experts=16, top_k=2
    )
    assert step == pytest.approx(1_000 + 1_600 * 2 / 16 + 8 * 2 + 10 * 4)
    tps = roofline.roofline_tokens_per_s(
        w, batch=1, context_tokens=10, kv_per_token=4, hidden_size=8, num_experts=16, top_k=2, bandwidth=1e6
    )
    assert tps == pytest.approx(1e6 / step)
    assert roofline.kv_bytes_per_token(28, 4, 128) == 57_344
    assert roofline.mean_decode_context(512, 512) == 768.0


def _meta_weights(name: str) -> tuple[shapes.ModelShape, roofline.ParamBytes]:
    from transformers import AutoModelForImageTextToText

    shape = shapes.get_shape(name)
    config = shapes.build_config(shape, shapes.build_tokenizer(shape.vocab_size))
    with torch.device("meta"):  # real sizes, no memory
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    return shape, roofline.model_param_bytes(model)


@pytest.mark.parametrize(
    ("name", "params_b", "roof_b1", "roof_b64"),
    [("omega17_vl_exp", 31.07, 544, 3332), ("qwen2_5_vl_7b", 8.29, 236, 12641)],
)
def test_real_shapes_sizes_and_roofline(name: str, params_b: float, roof_b1: float, roof_b64: float) -> None:
    """The shapes have the published sizes; the rooflines agree with DESIGN.md section 4."""
    shape, w = _meta_weights(name)
    assert w.total / 2e9 == pytest.approx(params_b, abs=0.01)
    kv = roofline.kv_bytes_per_token(shape.num_layers, shape.kv_heads, shape.head_dim)

    def roof(batch: int) -> float:
        return roofline.roofline_tokens_per_s(
            w,
            batch=batch,
            context_tokens=768,
            kv_per_token=kv,
            hidden_size=shape.hidden_size,
            num_experts=int(shape.text.get("num_experts", 0)),
            top_k=int(shape.text.get("num_experts_per_tok", 0)),
        )

    assert roof(1) == pytest.approx(roof_b1, rel=0.01)
    assert roof(64) == pytest.approx(roof_b64, rel=0.01)
    if shape.is_moe:  # ~3B active parameters, not 31B: the experts count 8/128 at batch 1
        active = roofline.decode_step_bytes(
            w,
            batch=1,
            context_tokens=0,
            kv_per_token=kv,
            hidden_size=shape.hidden_size,
            num_experts=128,
            top_k=8,
        )
        assert 2.8 < active / 2e9 < 3.3


@pytest.mark.parametrize(
    ("name", "h200_b1", "h200_b64"), [("omega17_vl_exp", 779, 4774), ("qwen2_5_vl_7b", 338, 18112)]
)
def test_the_h200_roofline_is_the_h100_one_scaled_by_bandwidth(
    name: str, h200_b1: float, h200_b64: float
) -> None:
    """Issue 16: at 4.8 TB/s the Omega shape's batch-1 roofline is about 780 tok/s (50% = about 390)."""
    from bench.vlmbench.bandwidth import datasheet_bandwidth

    shape, w = _meta_weights(name)
    sheet = datasheet_bandwidth("NVIDIA H200")
    assert sheet is not None
    kv = roofline.kv_bytes_per_token(shape.num_layers, shape.kv_heads, shape.head_dim)
    common = {
        "context_tokens": 768,
        "kv_per_token": kv,
        "hidden_size": shape.hidden_size,
        "num_experts": int(shape.text.get("num_experts", 0)),
        "top_k": int(shape.text.get("num_experts_per_tok", 0)),
    }
    for batch, expected in ((1, h200_b1), (64, h200_b64)):
        h200 = roofline.roofline_tokens_per_s(w, batch=batch, bandwidth=sheet[0], **common)
        h100 = roofline.roofline_tokens_per_s(w, batch=batch, **common)
        assert h200 == pytest.approx(h100 * 4.8 / 3.35) and h200 == pytest.approx(expected, rel=0.01)


def test_profile_summary_per_step() -> None:
    from bench.vlmbench.profile import summarize_events

    events = [
        ("aten::mm", 400.0, 6000.0, 40, False),  # an operator row also carries its kernels' time
        ("gemm_kernel", 0.0, 6000.0, 40, True),
        ("aten::index", 1000.0, 200.0, 8, False),
        ("index_kernel", 0.0, 200.0, 8, True),
    ]
    s = summarize_events(events, steps=4, top=2)
    assert s["gpu_ms_per_step"] == 1.55 and s["kernels_per_step"] == 12.0
    assert s["top_kernels"][0] == {"op": "gemm_kernel", "gpu_ms_per_step": 1.5, "calls_per_step": 10.0}
    assert [op["op"] for op in s["top_gpu_ops"]] == ["aten::mm", "aten::index"]
    assert [op["op"] for op in s["top_cpu_ops"]] == ["aten::index", "aten::mm"]
