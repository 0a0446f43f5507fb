"""The flash failure's kind: a table of real error texts, and the kind /health and the fatal line carry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omega_server import attention, flash_failure, models
from omega_server.engine.errors import describe_error
from omega_server.engine.load import warm_up

pytestmark = pytest.mark.timeout(300)

OOM_TEXT = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB"


@pytest.mark.parametrize(
    ("exc", "installed", "kind"),
    [
        (
            ImportError(
                "FlashAttention2 has been toggled on, but it cannot be used due to the following error: "
                "the package flash_attn seems to be not installed."
            ),
            False,
            "not_installed",
        ),
        (
            ImportError(
                "FlashAttention2 has been toggled on, but it cannot be used due to the following error: "
                "the package for FlashAttention2 doesn't seem to be installed."
            ),
            True,  # (even with a stray flash_attn distribution: transformers says it is not there)
            "not_installed",
        ),
        (ModuleNotFoundError("No module named 'flash_attn'"), False, "not_installed"),
        (ModuleNotFoundError("No module named 'flash_attn_2_cuda'"), True, "import_error"),
        (
            ImportError(
                "/site-packages/flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so: undefined symbol: "
                "_ZN3c105ErrorC2ENS_14SourceLocationESs"
            ),
            True,
            "import_error",
        ),
        (OSError("flash_attn_2_cuda.so: cannot open shared object file"), True, "import_error"),
        (RuntimeError("FlashAttention only supports Ampere GPUs or newer."), True, "unsupported_device"),
        (
            RuntimeError("CUDA error: no kernel image is available for execution on the device"),
            True,
            "unsupported_device",
        ),
        (ValueError("Qwen2VLModel does not support Flash Attention 2.0 yet."), True, "unsupported_device"),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True, "kernel_error"),
        (RuntimeError("CUDA error: device-side assert triggered"), True, "kernel_error"),
        (torch.OutOfMemoryError(OOM_TEXT), True, "out_of_memory"),
        (RuntimeError("CUDA error: out of memory"), True, "out_of_memory"),
        (OSError("Error no file named model.safetensors found in directory /models"), True, "other"),
        (TypeError("forward() got an unexpected keyword argument 'pixel_values'"), True, "other"),
    ],
)
def test_each_failure_has_its_kind(exc: BaseException, installed: bool, kind: str) -> None:
    assert flash_failure.classify(exc, describe_error(exc), installed=installed) == kind
    assert kind in flash_failure.ERROR_KINDS


def test_only_the_flash_kinds_are_flash_faults() -> None:
    assert set(flash_failure.ERROR_KINDS) - flash_failure.FLASH_KINDS == {"out_of_memory", "other"}


def _flash_oom_at_warm_up(path: Path) -> tuple[Callable[..., models.LoadedModel], Callable[..., None]]:
    """The real loader (eager stands in for a flash build) and the real warm-up, which runs out of
    memory on the flash model."""

    def loader(p: Path, *, attn_implementation: str, dtype: str, device: str) -> models.LoadedModel:
        impl = "eager" if attn_implementation == attention.FLASH else attn_implementation
        return models.load(p, attn_implementation=impl, dtype=dtype, device=device)

    def warmup(loaded: models.LoadedModel) -> None:
        if loaded.model.config._attn_implementation == "eager":
            raise torch.OutOfMemoryError(OOM_TEXT)
        warm_up(loaded)

    return loader, warmup


def test_out_of_memory_at_the_flash_warm_up_is_reported_as_such(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    path = tiny_checkpoint("qwen2_vl")
    loader, warmup = _flash_oom_at_warm_up(path)
    choice = attention.resolve(
        path, requested="auto", dtype="auto", device="cpu", warmup=warmup, loader=loader
    )
    assert choice.backend == "sdpa"  # the server still serves, in process
    assert choice.flash_attn.error_kind == "out_of_memory"
    assert choice.flash_attn.as_dict()["error_kind"] == "out_of_memory"
    assert "out of memory" in (choice.flash_attn.error or "")


def test_without_flash_attn_the_kind_is_not_installed(tiny_checkpoint: Callable[[str], Path]) -> None:
    choice = attention.resolve(
        tiny_checkpoint("llava"), requested="flash_attention_2", dtype="auto", device="cpu", warmup=warm_up
    )
    assert choice.flash_attn.error_kind == "not_installed"
    sdpa = attention.resolve(
        tiny_checkpoint("llava"), requested="sdpa", dtype="auto", device="cpu", warmup=warm_up
    )
    assert sdpa.flash_attn.error_kind is None and sdpa.flash_attn.as_dict()["error_kind"] is None


def test_when_sdpa_fails_too_the_fatal_error_carries_the_flash_kind(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """Out of memory on flash, then on sdpa: the server cannot start; its fatal line says both."""

    path = tiny_checkpoint("llava")
    loader, _ = _flash_oom_at_warm_up(path)

    def warmup(loaded: models.LoadedModel) -> None:
        raise torch.OutOfMemoryError(OOM_TEXT)

    with pytest.raises(torch.OutOfMemoryError) as info:
        attention.resolve(path, requested="auto", dtype="auto", device="cpu", warmup=warmup, loader=loader)
    note = flash_failure.note_of(info.value)
    assert note is not None and note.startswith("(flash_attn.error_kind=out_of_memory: OutOfMemoryError")
    assert flash_failure.note_of(RuntimeError("x")) is None
