"""The flash_attention_2 decode path on the slot cache (omega_server.kernels.flash_decode, kvslots).

flash-attn is not installed on the CPU: ``fake_flash_attn_with_kvcache`` stands in for
``flash_attn_with_kvcache`` (torch SDPA, row by row), doing what the real kernel does on these
shapes: write each row's new key/value at column ``cache_seqlens[row]`` of the (batch, width,
kv_heads, dim) cache view, attend to columns ``[0, cache_seqlens[row]]`` with the key/value heads
shared by their query-head groups, return (batch, 1, heads, dim).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omega_server.engine import Engine, EngineConfig
from omega_server.engine.kvslots import SlotCache
from omega_server.engine.sequence import Seq
from omega_server.engine.static_runner import StaticRunner
from omega_server.health import decode_report
from omega_server.kernels import flash_decode, gqa_decode
from torch.nn import functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from tests.omega_server.test_engine import chat


def fake_flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    cache_seqlens: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    **unused: Any,
) -> torch.Tensor:
    assert cache_seqlens is not None and cache_seqlens.dtype == torch.int32
    assert k is not None and v is not None and q.shape[1] == 1 and k.shape[1] == 1
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1 and q.stride(-1) == 1
    assert window_size == (-1, -1) and softcap == 0.0
    batch, _, heads, _ = q.shape
    groups = heads // k_cache.shape[2]
    out = torch.empty_like(q)
    for row in range(batch):
        n = int(cache_seqlens[row])
        assert n < k_cache.shape[1]
        k_cache[row, n] = k[row, 0]
        v_cache[row, n] = v[row, 0]
        keys = k_cache[row, : n + 1].transpose(0, 1).repeat_interleave(groups, 0)  # (heads, n + 1, dim)
        values = v_cache[row, : n + 1].transpose(0, 1).repeat_interleave(groups, 0)
        got = F.scaled_dot_product_attention(q[row].transpose(0, 1), keys, values, scale=softmax_scale)
        out[row] = got.transpose(0, 1)
    return out


@pytest.fixture
def fake_flash(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(flash_decode, "_KERNEL", fake_flash_attn_with_kvcache)
    yield


def filled_cache(
    lengths: list[int], *, slots: int = 4, width: int = 32, heads: int = 2, dim: int = 8
) -> SlotCache:
    torch.manual_seed(len(lengths))
    cache = SlotCache(slots, width, torch.device("cpu"), mrope=False)
    layers = [(torch.randn(1, heads, 4, dim), torch.randn(1, heads, 4, dim)) for _ in range(2)]
    cache.allocate(layers, torch.float32)
    for slot, n in enumerate(lengths):
        cache.load(
            slot, [(torch.randn(1, heads, n, dim), torch.randn(1, heads, n, dim)) for _ in range(2)], n, 0
        )
    return cache


def test_seqlens_mirror_write_pos_at_a_fixed_address() -> None:
    """``cache_seqlens`` (int32) is each slot's cached length before the step, through load, move,
    reset and steps; idle slots read 0; the buffer never moves (a CUDA graph holds its address)."""
    cache = filled_cache([5, 9, 3])
    address = cache.seqlens.data_ptr()
    cache.prepare_step(3)
    assert cache.seqlens.dtype == torch.int32
    assert cache.seqlens.tolist() == [5, 9, 3, 0]
    cache.finish_step(3)
    cache.move(2, 0, 4)  # slot 0 leaves, slot 2 compacts into it
    cache.reset(2)
    cache.prepare_step(2)
    assert cache.seqlens.tolist() == [4, 10, 0, 0] == cache.write_pos.tolist()
    assert cache.seqlens.data_ptr() == address


def test_flash_update_hands_the_new_states_through_unwritten() -> None:
    cache = filled_cache([5, 9])
    before = cache.keys[0].clone()
    cache.flash = True
    k, v = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    got_k, got_v = cache.update(k, v, 0)
    assert got_k is k and got_v is v
    torch.testing.assert_close(cache.keys[0], before)


@pytest.mark.parametrize("groups", [1, 4])
def test_decode_attention_equals_sdpa_over_the_mask(groups: int, fake_flash: None) -> None:
    """On the same slots: flash_attn_with_kvcache over ``cache_seqlens`` == sdpa over the 4D mask, and
    the new key/value land at each row's column, as the sdpa path's ``update`` writes them."""
    lengths, width = [5, 17, 2], 24
    ref_cache, flash_cache = filled_cache(lengths), filled_cache(lengths)
    for cache in (ref_cache, flash_cache):
        cache.view = (4, width)
        cache.prepare_step(3)
    flash_cache.flash = True
    module = SimpleNamespace(layer_idx=1, num_key_value_groups=groups, is_causal=True)
    q = torch.randn(4, 2 * groups, 1, 8)
    k, v = torch.randn(4, 2, 1, 8), torch.randn(4, 2, 1, 8)
    keys, values = ref_cache.update(k, v, 1)
    assert ref_cache.mask is not None
    want, _ = sdpa_attention_forward(module, q, keys, values, ref_cache.mask[:, :, :, :width], scaling=0.3)  # type: ignore[arg-type]
    with flash_decode.slot_decode(flash_cache):
        k_in, v_in = flash_cache.update(k, v, 1)
        got, _ = flash_decode.decode_attention(module, q, k_in, v_in, None, scaling=0.3)  # type: ignore[arg-type]
    assert got.shape == (4, 1, 2 * groups, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flash_cache.keys[1], ref_cache.keys[1])
    torch.testing.assert_close(flash_cache.values[1], ref_cache.values[1])


def test_other_calls_go_to_transformers_flash_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefill, the vision tower and calls outside a slot-cache step keep transformers' function."""
    seen: list[int] = []
    monkeypatch.setattr(flash_decode, "_ORIGINAL", lambda m, q, *a, **kw: (seen.append(q.shape[2]), None))
    module = SimpleNamespace(layer_idx=0)
    q1, q7 = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 7, 8)
    kv = torch.randn(1, 2, 7, 8)
    flash_decode.decode_attention(module, q1, kv, kv, None)  # type: ignore[arg-type]
    cache = filled_cache([3])
    cache.flash = True
    with flash_decode.slot_decode(cache):
        flash_decode.decode_attention(module, q7, kv, kv, None)  # type: ignore[arg-type]  # several tokens
        flash_decode.decode_attention(SimpleNamespace(), q1, kv, kv, None)  # type: ignore[arg-type]  # no layer_idx
    assert seen == [1, 7, 1]
    assert flash_decode._ACTIVE is None


def test_install_registers_and_restores_flash_attention_2() -> None:
    from transformers.integrations.flash_attention import flash_attention_forward

    try:
        flash_decode.install(True)
        assert ALL_ATTENTION_FUNCTIONS["flash_attention_2"] is flash_decode.decode_attention
        assert flash_decode.installed()
    finally:
        flash_decode.install(False)
    assert ALL_ATTENTION_FUNCTIONS["flash_attention_2"] is flash_attention_forward


def test_health_decode_block_names_the_flash_kernels() -> None:
    info = SimpleNamespace(kv_cache="static", cuda_graphs=True, flash_kernels=list(flash_decode.KERNELS))
    assert decode_report(info)["flash_kernels"] == ["flash_attn_with_kvcache", "flash_attn_varlen_func"]
    assert decode_report(None)["flash_kernels"] is None


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl_moe"])
def test_static_runner_flash_decode_matches_sdpa(
    arch: str, tiny_checkpoint: Callable[[str], Path], fake_flash: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real tiny model on the slot cache: the flash decode step (the fake kernel, wired through
    transformers' attention interface) gives sdpa's logits and greedy tokens, rows of different lengths
    joining in one batched prefill. (The model runs sdpa for prefill: ``decode_attention`` stands in as
    the process's ``sdpa`` function here, with transformers' sdpa as its fallthrough.)"""
    eng = Engine.load(
        EngineConfig(model_path=str(tiny_checkpoint(arch)), attn_impl="sdpa", kv_cache="static")
    )
    try:
        logits: dict[bool, torch.Tensor] = {}
        tokens: dict[bool, list[list[int]]] = {}
        for flash in (False, True):
            if flash:
                monkeypatch.setattr(flash_decode, "_ORIGINAL", sdpa_attention_forward)
                AttentionInterface.register("sdpa", flash_decode.decode_attention)
            runner = StaticRunner(eng._loaded.model, eng._loaded.processor, slots=4, width=256, graphs=False)
            runner.flash = runner.slot_cache.flash = flash
            seqs = [Seq(prepared=eng.prepare(chat(i)), loop=None, queue=None, emit=print) for i in (0, 3, 1)]
            steps: list[torch.Tensor] = []
            step = runner.graphs.run

            def recording(
                batch: int,
                width: int,
                step: Callable[..., torch.Tensor] = step,
                steps: list[torch.Tensor] = steps,
            ) -> torch.Tensor:
                out = step(batch, width)
                steps.append(out[:3].float().clone())
                return out

            runner.graphs.run = recording  # type: ignore[method-assign]
            got: list[list[int]] = []
            with torch.inference_mode():
                runner.prefill_batch(seqs)
                for _ in range(5):
                    got.append(runner.launch().wait())
            logits[flash], tokens[flash] = torch.stack(steps), got
        torch.testing.assert_close(logits[True], logits[False], rtol=1e-4, atol=1e-4)
        assert tokens[True] == tokens[False]
    finally:
        gqa_decode.install(True)
        eng.shutdown()


def test_without_full_mask_drops_only_a_mask_of_ones() -> None:
    from omega_server.engine.inputs import without_full_mask

    ids = torch.ones(2, 5, dtype=torch.long)
    full = {"input_ids": ids, "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    padded = {"input_ids": ids, "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])}
    assert set(without_full_mask(full)) == {"input_ids"}
    assert without_full_mask(padded) is padded
    assert without_full_mask({"input_ids": ids}) == {"input_ids": ids}


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl_moe"])
def test_prefill_without_the_mask_of_ones_gives_the_same_logits(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """What the flash prefill relies on: an unpadded prompt (its image's M-RoPE positions too) gives
    the same logits with its all-ones mask dropped."""
    from omega_server.engine.inputs import without_full_mask

    eng = Engine.load(
        EngineConfig(model_path=str(tiny_checkpoint(arch)), attn_impl="sdpa", kv_cache="dynamic")
    )
    try:
        model = eng._loaded.model
        inputs = eng.prepare(chat(2)).inputs
        got = []
        with torch.inference_mode():
            for batch in (inputs, without_full_mask(inputs)):
                model.model.rope_deltas = None
                got.append(model(**batch, use_cache=False).logits)
        assert "attention_mask" in inputs
        torch.testing.assert_close(got[0], got[1])
    finally:
        eng.shutdown()


def test_flash_slot_cache_warm_up_failure_falls_back_to_sdpa_in_place(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """A model set to flash_attention_2 whose kernels cannot run here (no flash-attn on the CPU): the
    slot cache's warm-up fails, the model switches to sdpa in place, the sdpa slot cache is used, and
    the info (so /health) says flash is not loaded and why."""
    import dataclasses

    from omega_server.engine.load import start_runner

    config = EngineConfig(model_path=str(tiny_checkpoint("qwen2_5_vl")), attn_impl="sdpa", kv_cache="static")
    eng = Engine.load(config)
    try:
        loaded = eng._loaded
        for cfg in {id(c): c for c in (loaded.model.config, loaded.model.config.get_text_config())}.values():
            cfg._attn_implementation_internal = "flash_attention_2"
        assert loaded.model.config._attn_implementation == "flash_attention_2"
        info = dataclasses.replace(
            eng.info,
            attn="flash_attention_2",
            flash_attn={"available": True, "loaded": True, "version": "2.8.3", "error": None},
        )
        runner = start_runner(config, loaded, info)
        assert isinstance(runner, StaticRunner) and not runner.flash
        assert loaded.model.config._attn_implementation == "sdpa"
        assert info.attn == "sdpa" and info.kv_cache == "static" and info.flash_kernels is None
        assert info.flash_attn["loaded"] is False and info.flash_attn["error"]
        assert info.flash_load_failures == 1 and info.gqa_decode
        assert decode_report(info)["flash_kernels"] is None
    finally:
        flash_decode.install(False)
        gqa_decode.install(True)
        eng.shutdown()
