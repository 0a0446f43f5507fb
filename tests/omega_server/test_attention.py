"""Attention backend choice: flash requested on a machine without it serves with sdpa and says why."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omega_server import attention, models
from omega_server.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from omega_server.engine.errors import describe_error
from omega_server.engine.load import warm_up
from PIL import Image

pytestmark = pytest.mark.timeout(300)


def greedy(engine: Engine, n: int = 8) -> list[int]:
    image = Image.new("RGB", (48, 40), (250, 120, 0))
    req = GenerationRequest(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": "what?"}],
            }
        ],
        params=SamplingParams(max_tokens=n, temperature=0.0),
    )

    async def run() -> list[int]:
        return [t async for out in engine.stream(engine.prepare(req)) for t in out.token_ids]

    return asyncio.run(run())


@pytest.mark.parametrize("requested", ["flash_attention_2", "auto"])
def test_flash_requested_without_flash_attn_falls_back_to_sdpa(
    requested: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    eng = Engine.load(EngineConfig(model_path=str(tiny_checkpoint("qwen2_5_vl")), attn_impl=requested))
    try:
        info = eng.info
        assert info.attn == "sdpa" == eng._loaded.model.config._attn_implementation
        assert info.attn_requested == requested
        assert info.flash_attn["available"] is False
        assert info.flash_attn["loaded"] is False
        assert info.flash_attn["error"].startswith("ImportError: FlashAttention2")
        assert info.flash_load_failures == 1
        assert len(greedy(eng, 4)) >= 1  # and it serves
    finally:
        eng.shutdown()


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava", "idefics3"])
def test_sdpa_and_eager_give_the_same_greedy_tokens(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    outs = {}
    for impl in ("sdpa", "eager"):
        eng = Engine.load(EngineConfig(model_path=str(tiny_checkpoint(arch)), attn_impl=impl))
        try:
            assert eng.info.attn == impl == eng.info.attn_requested
            assert eng.info.flash_attn["error"] is None and eng.info.flash_load_failures == 0
            outs[impl] = greedy(eng)
        finally:
            eng.shutdown()
    assert outs["sdpa"] == outs["eager"]


@pytest.fixture
def broken_flash_attn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed flash_attn 2.8.3 whose CUDA extension is missing (as when built for another torch)."""
    site = tmp_path / "site"
    pkg = site / "flash_attn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "__version__ = '2.8.3'\nfrom flash_attn.flash_attn_interface import flash_attn_func  # noqa: F401\n"
    )
    (pkg / "flash_attn_interface.py").write_text("import flash_attn_2_cuda as flash_attn_gpu  # noqa: F401\n")
    dist = site / "flash_attn-2.8.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flash_attn\nVersion: 2.8.3\n")
    (dist / "RECORD").write_text("")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith("flash_attn")]:
        del sys.modules[name]


def test_installed_but_broken_flash_attn_is_reported_and_falls_back(
    broken_flash_attn: Path, tiny_checkpoint: Callable[[str], Path]
) -> None:
    assert attention.flash_attn_version() == "2.8.3"
    assert "flash_attn_2_cuda" in (attention.flash_attn_import_error() or "")
    eng = Engine.load(EngineConfig(model_path=str(tiny_checkpoint("llava")), attn_impl="flash_attention_2"))
    try:
        flash = eng.info.flash_attn
        assert eng.info.attn == "sdpa"
        assert flash["loaded"] is False and flash["version"] == "2.8.3"
        assert flash["error"] and flash["error"].split(":")[0] in ("ImportError", "ModuleNotFoundError")
        assert len(greedy(eng, 3)) >= 1
    finally:
        eng.shutdown()


def test_kernel_error_at_warm_up_switches_to_sdpa_in_place(tiny_checkpoint: Callable[[str], Path]) -> None:
    """A model that loads but whose attention kernel fails at the warm-up forward falls back in-process."""
    path = tiny_checkpoint("qwen2_vl")
    calls: list[str] = []

    def loader(p: Path, *, attn_implementation: str, dtype: str, device: str) -> models.LoadedModel:
        calls.append(attn_implementation)
        # eager stands in for a flash build whose kernels cannot run on this GPU
        impl = "eager" if attn_implementation == attention.FLASH else attn_implementation
        return models.load(p, attn_implementation=impl, dtype=dtype, device=device)

    def warmup(loaded: models.LoadedModel) -> None:
        if loaded.model.config._attn_implementation == "eager":
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        warm_up(loaded)

    choice = attention.resolve(
        path, requested="auto", dtype="auto", device="cpu", warmup=warmup, loader=loader
    )
    assert calls == [attention.FLASH]  # switched in place: the weights were not loaded twice
    assert choice.backend == "sdpa" == choice.loaded.model.config._attn_implementation
    assert choice.flash_attn.loaded is False
    assert (
        choice.flash_attn.error
        == "RuntimeError: CUDA error: no kernel image is available for execution on the device"
    )
    assert choice.flash_attn.error_kind == "unsupported_device"
    assert choice.flash_load_failures == 1


def test_a_model_that_cannot_switch_in_place_is_freed_before_the_reload(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """Two copies of a large model do not fit one GPU: the flash copy is gone before sdpa loads."""
    path = tiny_checkpoint("qwen2_vl")
    flash_copy: list[weakref.ref[Any]] = []

    def loader(p: Path, *, attn_implementation: str, dtype: str, device: str) -> models.LoadedModel:
        if attn_implementation == attention.FLASH:
            loaded = models.load(p, attn_implementation="eager", dtype=dtype, device=device)

            def cannot_switch(_impl: str) -> None:
                raise ValueError("this model cannot change its attention in place")

            loaded.model.set_attn_implementation = cannot_switch  # (monkeypatch would keep the model alive)
            flash_copy.append(weakref.ref(loaded.model))
            return loaded
        gc.collect()
        assert flash_copy and flash_copy[0]() is None, "the flash copy is still alive at the reload"
        return models.load(p, attn_implementation=attn_implementation, dtype=dtype, device=device)

    def warmup(loaded: models.LoadedModel) -> None:
        if loaded.model.config._attn_implementation == "eager":
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    choice = attention.resolve(
        path, requested="auto", dtype="auto", device="cpu", warmup=warmup, loader=loader
    )
    assert choice.backend == "sdpa" and choice.flash_load_failures == 1


def test_sdpa_failure_is_not_swallowed(tiny_checkpoint: Callable[[str], Path]) -> None:
    def warmup(loaded: models.LoadedModel) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        attention.resolve(
            tiny_checkpoint("llava"), requested="sdpa", dtype="auto", device="cpu", warmup=warmup
        )


def test_unknown_backend_rejected(tiny_checkpoint: Callable[[str], Path]) -> None:
    with pytest.raises(ValueError, match="ATTN_IMPL must be one of"):
        attention.resolve(
            tiny_checkpoint("llava"), requested="flash3", dtype="auto", device="cpu", warmup=lambda _: None
        )


def test_describe_error_is_one_bounded_line() -> None:
    assert describe_error(ImportError("first line\nsecond")) == "ImportError: first line"
    assert len(describe_error(ValueError("x" * 2000))) == 500
    assert describe_error(RuntimeError()) == "RuntimeError"


def test_status_dict_shape() -> None:
    status = attention.FlashAttnStatus(available=False, loaded=False, version=None, error="ImportError: x")
    assert status.as_dict() == {
        "available": False,
        "loaded": False,
        "version": None,
        "error": "ImportError: x",
        "error_kind": None,
    }


def test_warm_up_uses_an_image(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = models.load(tiny_checkpoint("qwen2_vl"), attn_implementation="sdpa", device="cpu")
    seen: list[dict[str, Any]] = []
    forward = loaded.model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return forward(*args, **kwargs)

    monkeypatch.setattr(loaded.model, "forward", spy)
    warm_up(loaded)
    assert "pixel_values" in seen[0] and "image_grid_thw" in seen[0] and "mm_token_type_ids" in seen[0]
    assert len(seen) == 2  # prefill + one batched decode step
    assert torch.is_tensor(seen[1]["attention_mask"])
