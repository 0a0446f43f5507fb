"""One-token SDPA on the unexpanded key/value heads (omega_server.kernels.gqa_decode) computes transformers' sdpa."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omega_server.engine import Engine, EngineConfig
from omega_server.engine.sequence import Seq
from omega_server.engine.static_runner import StaticRunner
from omega_server.kernels import gqa_decode
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tests.omega_server.test_engine import chat


@pytest.fixture(autouse=True)
def restore_sdpa() -> Iterator[None]:
    """Each test leaves ``sdpa`` as the engine installs it by default."""
    yield
    gqa_decode.install(True)


def additive_mask(lengths: list[int], width: int) -> torch.Tensor:
    mask = torch.full((len(lengths), 1, 1, width), torch.finfo(torch.float32).min)
    for row, n in enumerate(lengths):
        mask[row, :, :, :n] = 0
    return mask


@pytest.mark.parametrize("groups", [2, 4, 8])
def test_packed_decode_equals_sdpa_with_repeated_heads(groups: int) -> None:
    torch.manual_seed(groups)
    batch, kv_heads, width, dim = 3, 2, 40, 16
    module = SimpleNamespace(num_key_value_groups=groups, is_causal=True)
    q = torch.randn(batch, kv_heads * groups, 1, dim)
    k = torch.randn(batch, kv_heads, width, dim)
    v = torch.randn(batch, kv_heads, width, dim)
    mask = additive_mask([40, 7, 23], width)  # ragged rows, as in the slot cache
    got, _ = gqa_decode.decode_attention(module, q, k, v, mask, scaling=0.25)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)  # type: ignore[arg-type]
    assert got.shape == want.shape == (batch, 1, kv_heads * groups, dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a row sees only its own columns: changing a masked-out key changes nothing
    k2 = k.clone()
    k2[1, :, 10:] = 100.0
    again, _ = gqa_decode.decode_attention(module, q, k2, v, mask, scaling=0.25)
    torch.testing.assert_close(again[1], got[1])


def test_per_head_mask_is_regrouped() -> None:
    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    mask = torch.zeros(2, 4, 1, 12)
    mask[:, 1, :, 5:] = torch.finfo(torch.float32).min  # one query head sees 5 keys
    got, _ = gqa_decode.decode_attention(module, q, k, v, mask)
    want, _ = sdpa_attention_forward(module, q, k, v, mask)  # type: ignore[arg-type]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_other_calls_go_to_transformers_sdpa() -> None:
    """Prefill (several query tokens) and ungrouped heads are not packed."""
    torch.manual_seed(1)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    got, _ = gqa_decode.decode_attention(module, q, k, v, None)
    want, _ = sdpa_attention_forward(module, q, k, v, None)  # type: ignore[arg-type]
    torch.testing.assert_close(got, want)
    plain = SimpleNamespace(num_key_value_groups=1, is_causal=True)
    q1, k1 = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 6, 8)
    got, _ = gqa_decode.decode_attention(plain, q1, k1, k1, None)
    want, _ = sdpa_attention_forward(plain, q1, k1, k1, None)  # type: ignore[arg-type]
    torch.testing.assert_close(got, want)


def test_install_switches_the_process_sdpa_function() -> None:
    gqa_decode.install(True)
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is gqa_decode.decode_attention and gqa_decode.installed()
    gqa_decode.install(False)
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa_attention_forward and not gqa_decode.installed()


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl_moe"])
def test_static_decode_logits_equal_with_and_without_packing(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """The slot cache's decode steps give the same logits through either attention function."""
    eng = Engine.load(
        EngineConfig(model_path=str(tiny_checkpoint(arch)), attn_impl="sdpa", kv_cache="static")
    )
    try:
        assert eng.info.gqa_decode
        text = eng._loaded.model.config.get_text_config()
        assert text.num_attention_heads > text.num_key_value_heads  # the tiny models use GQA
        logits = {}
        for packed in (True, False):
            gqa_decode.install(packed)
            runner = StaticRunner(eng._loaded.model, eng._loaded.processor, slots=2, width=256, graphs=False)
            seqs = [Seq(prepared=eng.prepare(chat(i)), loop=None, queue=None, emit=print) for i in (0, 2)]
            steps: list[torch.Tensor] = []
            step = runner.graphs.run

            def recording(
                batch: int,
                width: int,
                step: Callable[..., torch.Tensor] = step,
                steps: list[torch.Tensor] = steps,
            ) -> torch.Tensor:
                out = step(batch, width)
                steps.append(out[:2].float().clone())
                return out

            runner.graphs.run = recording  # type: ignore[method-assign]
            with torch.inference_mode():
                runner.prefill_batch(seqs)
                for _ in range(4):
                    runner.launch().wait()
            logits[packed] = torch.stack(steps)
        torch.testing.assert_close(logits[True], logits[False], rtol=1e-4, atol=1e-4)
    finally:
        eng.shutdown()
