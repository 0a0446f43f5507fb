"""The opt-in torch.compile'd decode step (``EngineConfig.compile``) on CPU: same greedy tokens, and
one compile for batch 1 plus one (dynamic batch) for every other batch size."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch._dynamo.utils as dynamo_utils
from omega_server.engine import Engine, EngineConfig
from omega_server.engine.static_runner import StaticRunner

from tests.omega_server.test_engine import chat, run_concurrently, tokens

pytestmark = pytest.mark.timeout(300)

# inductor on CPU compiles C++ with gcc (minutes on the 2-core CI machine); "aot_eager" runs the same
# dynamo capture and AOT functionalization (the slot cache's in-place writes included) without it.
BACKEND = os.environ.get("OMEGA_TEST_COMPILE_BACKEND", "aot_eager")


@pytest.mark.parametrize("arch", ["qwen3_vl_moe"])
def test_compiled_decode_step_gives_the_same_greedy_tokens(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    path = str(tiny_checkpoint(arch))
    reqs = [chat(i, max_tokens=6) for i in range(3)]
    outs: dict[bool, list[list[int]]] = {}
    for compiled in (False, True):
        graphs_before = dynamo_utils.counters["stats"]["unique_graphs"]
        eng = Engine.load(
            EngineConfig(
                model_path=path,
                attn_impl="sdpa",
                kv_cache="static",
                max_batch_size=3,
                max_model_length=256,
                compile=compiled,
                compile_backend=BACKEND,
            )
        )
        try:
            assert eng.info.kv_cache == "static"
            assert eng.info.compiled is compiled
            assert (eng.info.compile_seconds > 0) is compiled
            outs[compiled] = [tokens(o) for o in run_concurrently(eng, reqs)]
            if compiled:
                runner = eng._runner
                assert isinstance(runner, StaticRunner)
                with torch.inference_mode():  # every batch size, the full one (= slots) too
                    for batch in (1, 2, 3, 2):
                        runner.graphs.prepare(batch, runner.width)
                # batch 1, then one graph with a dynamic batch: no compile per batch size
                assert dynamo_utils.counters["stats"]["unique_graphs"] - graphs_before == 2
        finally:
            eng.shutdown()
    assert all(outs[False]), outs  # EOS may end a row early; none is empty
    assert outs[True] == outs[False]
