"""Chunked prefill on the static slot cache: a long prompt is prefilled a chunk per engine step, so the
running streams keep getting tokens meanwhile; its outputs are the same as a prefill in one pass.

Real tiny checkpoints on the CPU. "Between two tokens of a running stream" is measured in prompt
tokens prefilled (``EngineStats.prefill_tokens``), not in milliseconds.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omega_server.engine import Engine, EngineConfig, GenerationRequest, SamplingParams, StepOutput
from omega_server.engine.prefix_cache import chunk_end
from omega_server.engine.sequence import Seq

from tests.omega_server.test_engine import reference
from tests.omega_server.test_prefix_cache import REQUESTS, assert_same, summary

pytestmark = pytest.mark.timeout(300)

CHUNK = 32


def load(path: Path, chunk: int, **kw: Any) -> Engine:
    config = EngineConfig(
        model_path=str(path), attn_impl="sdpa", kv_cache="static", prefill_chunk_tokens=chunk, **kw
    )
    return Engine.load(config)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl_moe", "llava", "idefics3"])
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_chunked_outputs_equal_one_pass_prefill(
    arch: str, prefix_caching: bool, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """Images before and after the chunk edges, with and without cached prefix blocks."""
    results = {}
    for chunk in (0, 16):
        eng = load(tiny_checkpoint(arch), chunk, max_batch_size=2, prefix_caching=prefix_caching)
        try:
            results[chunk] = [summary(eng.generate_sync(eng.prepare(r), timeout=120)) for r in REQUESTS]
            passes = eng.stats.prefill_passes
        finally:
            eng.shutdown()
        if chunk:
            assert passes > len(REQUESTS)  # the prompts really were cut
    assert_same(results[0], results[16])


def test_chunks_end_at_the_budget_but_never_inside_the_images() -> None:
    assert chunk_end(0, 32, 100, (100, 0)) == 32
    assert chunk_end(96, 32, 100, (100, 0)) == 100
    assert chunk_end(0, 0, 100, (100, 0)) == 100  # no budget: the rest
    assert chunk_end(0, 32, 100, (20, 70)) == 70  # reaches the images: takes them all
    assert chunk_end(70, 32, 100, (20, 70)) == 100
    assert chunk_end(0, 16, 100, (20, 70)) == 16  # stops before them


def long_request(max_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(
        messages=[{"role": "user", "content": "tell me everything about " + "this long topic " * 40}],
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


@pytest.mark.parametrize("chunk", [CHUNK, 0])
def test_running_streams_keep_getting_tokens_while_a_long_prompt_prefills(
    chunk: int, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """A stream decodes; a long prompt arrives. With chunks, at most one chunk of prompt tokens is
    prefilled between two of the stream's tokens; in one pass (chunk 0) the whole prompt is."""
    eng = load(tiny_checkpoint("qwen2_5_vl"), chunk, max_batch_size=2)
    try:
        long_req = long_request()
        prompt = eng.prepare(long_req)
        assert prompt.prompt_tokens > 4 * CHUNK
        seen: list[int] = []  # prefill_tokens at each token of the running stream
        long_out: list[Any] = []
        long_started: list[int] = []  # the stream's token count when the long prompt's first came
        done = threading.Event()

        def long_emit(item: Any) -> None:
            long_out.append(item)
            if not long_started:
                long_started.append(len(seen))
            if isinstance(item, BaseException) or item.finished:
                done.set()

        def stream_emit(item: Any) -> None:
            assert isinstance(item, StepOutput)
            seen.append(eng.stats.prefill_tokens)
            if len(seen) == 3:  # the stream runs: the long prompt arrives
                eng._submit(Seq(prepared=prompt, loop=None, queue=None, emit=long_emit))

        running = GenerationRequest(
            messages=[{"role": "user", "content": "hi"}],
            params=SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True),
        )
        stream = Seq(prepared=eng.prepare(running), loop=None, queue=None, emit=stream_emit)
        eng._submit(stream)
        assert done.wait(120)
        while not stream.done:
            threading.Event().wait(0.05)
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        assert sum(gaps) >= prompt.prompt_tokens
        if chunk:
            assert max(gaps) <= CHUNK
            assert long_started[0] - 3 >= prompt.prompt_tokens // CHUNK - 1  # a token per chunk meanwhile
        else:
            assert max(gaps) >= prompt.prompt_tokens  # today's one-pass prefill: the whole prompt at once
        got = [t for o in long_out for t in o.token_ids]
        assert got == reference(eng, long_req)[: len(got)]
    finally:
        eng.shutdown()


def test_the_environment_sets_chunked_prefill_and_prefix_caching() -> None:
    from omega_server.app import engine_config
    from omega_server.settings import load_settings

    env = {"MODEL_PATH": "/models/x", "PREFILL_CHUNK_TOKENS": "512"}
    config = engine_config(
        load_settings({**env, "ENABLE_PREFIX_CACHING": "false", "PREFIX_CACHE_TOKENS": "4096"})
    )
    assert config.prefill_chunk_tokens == 512
    assert config.prefix_caching is False and config.prefix_cache_tokens == 4096
    defaults = engine_config(load_settings({"MODEL_PATH": "/models/x"}))
    assert (
        defaults.prefill_chunk_tokens == 0
        and defaults.prefix_caching
        and defaults.prefix_cache_tokens == 16384
    )
