"""KV slots sized from device memory: the pure sizing, its wiring into the engine, the fatal cases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omega_server.engine import Engine, EngineConfig
from omega_server.engine.errors import KVCacheTooSmallError
from omega_server.engine.kv_budget import GIB, DeviceMemory, bytes_per_token, plan_slots

from tests.omega_server.test_engine import chat, collect

pytestmark = pytest.mark.timeout(300)

OMEGA_31B = {"num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128}


def test_bytes_per_token_of_the_31b_shape() -> None:
    # keys + values: 2 x 48 layers x 4 heads x 128 x 2 bytes = 96 KiB, plus one mask column (2 bytes)
    assert bytes_per_token(OMEGA_31B, 2) == 2 * 48 * 4 * 128 * 2 + 2


def test_all_requested_slots_when_they_fit() -> None:
    per_token = bytes_per_token(OMEGA_31B, 2)
    memory = DeviceMemory(total=141 * GIB, used=62 * GIB, peak_extra=4 * GIB)
    budget = plan_slots(
        bytes_per_token=per_token, memory=memory, utilization=0.9, max_batch_size=8, max_model_length=8192
    )
    assert budget.slots == 8 and not budget.lowered and budget.token_capacity == 8 * 8192
    assert budget.budget_bytes == int(141 * GIB * 0.9) - 66 * GIB
    assert "fits" in budget.describe()


def test_slots_lowered_when_the_batch_does_not_fit() -> None:
    """64 x 32768 tokens of the 31B shape is 192 GiB: on a 141 GB device the count is lowered."""
    per_token = bytes_per_token(OMEGA_31B, 2)
    memory = DeviceMemory(total=141 * GIB, used=62 * GIB, peak_extra=4 * GIB)
    budget = plan_slots(
        bytes_per_token=per_token, memory=memory, utilization=0.9, max_batch_size=64, max_model_length=32768
    )
    expected = (int(141 * GIB * 0.9) - 66 * GIB) // (per_token * 32768)
    assert budget.slots == expected and 1 <= expected < 64 and budget.lowered
    assert "lowered from MAX_BATCH_SIZE=64" in budget.describe()


def test_not_one_sequence_fits_is_a_fatal_error_of_its_own_kind() -> None:
    memory = DeviceMemory(total=24 * GIB, used=20 * GIB, peak_extra=1 * GIB)
    with pytest.raises(KVCacheTooSmallError, match="MAX_MODEL_LENGTH=262144") as info:
        plan_slots(
            bytes_per_token=bytes_per_token(OMEGA_31B, 2),
            memory=memory,
            utilization=0.9,
            max_batch_size=4,
            max_model_length=262144,
        )
    assert info.value.kind == "kv_cache_too_small"


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl_moe", "llava", "idefics3"])
def test_bytes_per_token_equals_what_the_slot_cache_allocates(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    eng = Engine.load(
        EngineConfig(
            model_path=str(tiny_checkpoint(arch)), attn_impl="sdpa", max_batch_size=2, kv_cache="static"
        )
    )
    try:
        sc = eng._runner.slot_cache  # type: ignore[attr-defined]
        allocated = sum(t.numel() * t.element_size() for t in (*sc.keys, *sc.values, sc.mask))
        per_token = bytes_per_token(eng._loaded.model.config, eng._loaded.model.dtype.itemsize)
        assert allocated == per_token * sc.slots * sc.width
    finally:
        eng.shutdown()


def probe(memory: DeviceMemory, profiled: list[bool]) -> Callable[[Callable[[], None]], DeviceMemory]:
    def measure(profile: Callable[[], None]) -> DeviceMemory:
        profile()  # the engine's profiling prefill runs for real
        profiled.append(True)
        return memory

    return measure


def test_the_engine_runs_with_the_slots_that_fit_and_says_so(tiny_checkpoint: Callable[[str], Path]) -> None:
    from omega_server.health import kv_report

    path = tiny_checkpoint("qwen2_5_vl")
    eng0 = Engine.load(
        EngineConfig(model_path=str(path), attn_impl="sdpa", max_batch_size=1, kv_cache="static")
    )
    per_token = bytes_per_token(eng0._loaded.model.config, eng0._loaded.model.dtype.itemsize)
    eng0.shutdown()
    length = 512
    profiled: list[bool] = []
    memory = DeviceMemory(total=10 * GIB, used=int(10 * GIB * 0.9) - int(2.5 * per_token * length))
    eng = Engine.load(
        EngineConfig(
            model_path=str(path),
            attn_impl="sdpa",
            max_batch_size=4,
            max_model_length=length,
            kv_cache="static",
            memory_probe=probe(memory, profiled),
        )
    )
    try:
        assert profiled == [True]
        assert eng.info.kv_slots == 2 and eng.info.kv_token_capacity == 2 * length
        assert eng.info.kv_sized_from_memory
        report = kv_report(eng.info)
        assert report["slots"] == 2 and report["lowered"] is True and report["token_capacity"] == 1024

        async def main() -> list[Any]:
            return list(
                await asyncio.gather(*(collect(eng, eng.prepare(chat(i, max_tokens=5))) for i in range(4)))
            )

        results = asyncio.run(main())
        assert all(r[-1].finished for r in results)
        assert eng.stats.max_batch_seen == 2  # never more rows than slots
    finally:
        eng.shutdown()


def test_the_engine_refuses_to_start_when_not_one_sequence_fits(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    memory = DeviceMemory(total=1 * GIB, used=int(0.9 * GIB))
    with pytest.raises(KVCacheTooSmallError):
        Engine.load(
            EngineConfig(
                model_path=str(tiny_checkpoint("llava")),
                attn_impl="sdpa",
                kv_cache="static",
                memory_probe=lambda profile: memory,
            )
        )


def test_out_of_memory_at_the_slot_warm_up_is_fatal_not_a_silent_dynamic_cache(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import omega_server.engine.load as load_module
    from omega_server.engine.static_runner import StaticRunner

    real = load_module.warm_runner

    def warm(runner: Any, loaded: Any) -> None:
        if isinstance(runner, StaticRunner):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 192.00 GiB")
        real(runner, loaded)

    monkeypatch.setattr(load_module, "warm_runner", warm)
    with pytest.raises(KVCacheTooSmallError, match="ran out of device memory"):
        Engine.load(
            EngineConfig(model_path=str(tiny_checkpoint("llava")), attn_impl="sdpa", kv_cache="static")
        )


def test_the_fatal_line_names_its_own_kind(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's start-up failure line reads ``fatal: kv_cache_too_small: ...`` (the operator's reason)."""
    import omega_server.app as app_module
    from fastapi.testclient import TestClient
    from omega_server.settings import load_settings

    memory = DeviceMemory(total=1 * GIB, used=int(0.9 * GIB))

    def load(config: EngineConfig) -> Any:
        config.memory_probe = lambda profile: memory
        config.kv_cache = "static"
        return Engine.load(config)

    monkeypatch.setattr(app_module, "_load_engine", load)
    lines: list[str] = []
    settings = load_settings({"MODEL_PATH": str(tiny_checkpoint("llava")), "ATTN_IMPL": "sdpa"})
    with TestClient(app_module.create_app(settings, on_fatal=lines.append)) as client:
        for _ in range(600):
            if lines:
                break
            asyncio.run(asyncio.sleep(0.05))
        body = client.get("/health").json()
    assert lines and lines[0].startswith("fatal: kv_cache_too_small: one sequence of MAX_MODEL_LENGTH=8192")
    assert body["status"] == "failed" and body["error"].startswith("kv_cache_too_small:")
