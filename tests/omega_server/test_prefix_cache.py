"""Prefix caching on the static slot cache: the same greedy tokens and log-probabilities as without it.

Real tiny checkpoints of every supported family, on the CPU: prompts that share a system prompt and
an instruction, the same image by content or a different one, the image before or after the shared
text, one at a time and several admitted at once (batched prefill beside cached-prefix prefills).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omega_server.engine import Engine, EngineConfig, GenerationRequest, SamplingParams, StepOutput
from omega_server.engine.prefix_cache import BLOCK, PrefixCache, PromptKey, prompt_key
from omega_server.models import SUPPORTED_MODEL_TYPES
from PIL import Image

from tests.omega_server.test_engine import run_concurrently, tokens

pytestmark = pytest.mark.timeout(300)

SYSTEM = "You are a careful assistant who answers in full sentences. " * 4
INSTRUCTION = "Describe the picture: its colours, its shapes and what it shows. " * 3


def ask(question: str, image: int | None = None, *, image_last: bool = False) -> GenerationRequest:
    """A chat with the shared system prompt and instruction, an optional image (by colour) and a
    question of its own; the image comes before the instruction, or after it with ``image_last``."""
    content: list[dict[str, Any]] = [{"type": "text", "text": INSTRUCTION + question}]
    if image is not None:
        part = {"type": "image", "image": Image.new("RGB", (56, 56), (40 * image, 90, 200))}
        content.insert(len(content) if image_last else 0, part)
    return GenerationRequest(
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
        params=SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=2),
    )


REQUESTS = [
    ask("What is it?", 0),
    ask("Which colour is it?", 0),  # the same image: system, image and instruction cached
    ask("What is it?", 1),  # another image: the system prompt cached
    ask("Any text?"),
    ask("Any text at all?"),  # text only: system and instruction cached
    ask("Is it round?", 2, image_last=True),  # the image after the shared text: encoded with the suffix
    ask("Is it square?", 3, image_last=True),
    ask("Is it square?", 3, image_last=True),  # the same prompt again: all but its last block
]


def load(path: Path, on: bool, **kw: Any) -> Engine:
    config = EngineConfig(model_path=str(path), attn_impl="sdpa", kv_cache="static", prefix_caching=on, **kw)
    return Engine.load(config)


def summary(outs: list[StepOutput]) -> tuple[list[int], list[float]]:
    return tokens(outs), [lp.logprob for o in outs for lp in o.logprobs or []]


def assert_same(
    plain: list[tuple[list[int], list[float]]], cached: list[tuple[list[int], list[float]]]
) -> None:
    for (want_tokens, want_lp), (got_tokens, got_lp) in zip(plain, cached, strict=True):
        assert got_tokens == want_tokens
        assert got_lp == pytest.approx(want_lp, abs=2e-4)


@pytest.mark.parametrize("arch", SUPPORTED_MODEL_TYPES)
def test_greedy_outputs_equal_with_and_without_prefix_caching(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    results = {}
    for on in (False, True):
        eng = load(tiny_checkpoint(arch), on, max_batch_size=2)
        try:
            results[on] = [summary(eng.generate_sync(eng.prepare(r), timeout=120)) for r in REQUESTS]
            stats, info = eng.stats, eng.info
        finally:
            eng.shutdown()
        assert info.prefix_caching is on
    assert_same(results[False], results[True])
    assert stats.prefix_cache_queries == len(REQUESTS)
    assert stats.prefix_cache_hits == len(REQUESTS) - 1  # every prompt but the first shares the system prompt
    assert stats.prefix_cache_hit_tokens >= (len(REQUESTS) - 1) * BLOCK


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava"])
def test_concurrent_requests_mix_batched_and_cached_prefills(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """A second wave admitted together: its cached-prefix prompts prefill alone, the rest batched."""
    results = {}
    for on in (False, True):
        eng = load(tiny_checkpoint(arch), on, max_batch_size=4)
        try:
            first = run_concurrently(eng, REQUESTS[:4])
            second = run_concurrently(eng, [*REQUESTS[4:], ask("New?", 5), ask("Newer?", 6)])
            results[on] = [summary(o) for o in first + second]
            hits = eng.stats.prefix_cache_hits
        finally:
            eng.shutdown()
    assert_same(results[False], results[True])
    assert hits >= 4


def test_prompt_key_names_images_by_content(tiny_checkpoint: Callable[[str], Path]) -> None:
    eng = load(tiny_checkpoint("qwen2_5_vl"), True)
    try:
        keys = [eng.prepare(r).prefix_key for r in (ask("Q", 0), ask("Q", 0), ask("Q", 1), ask("Q"))]
    finally:
        eng.shutdown()
    same, again, other, text = keys
    assert isinstance(same, PromptKey) and same.hashes == again.hashes
    assert same.media_start < same.media_end <= same.length
    shared = [a == b for a, b in zip(same.hashes, other.hashes, strict=False)]
    first_image_block = same.media_start // BLOCK
    assert all(shared[:first_image_block]) and not any(shared[first_image_block:])
    before = (same.media_start - 1) // BLOCK  # the block with the image's opening token may differ
    assert text.media_end == 0 and text.hashes[:before] == same.hashes[:before]


def test_usable_prefixes_end_at_block_edges_outside_the_images() -> None:
    key = PromptKey(
        hashes=tuple(bytes([i]) for i in range(6)), length=6 * BLOCK + 3, media_start=20, media_end=50
    )
    assert [key.usable(b) for b in range(7)] == [False, True, False, False, True, True, True]
    whole = PromptKey(hashes=(b"a", b"b"), length=2 * BLOCK, media_start=2 * BLOCK, media_end=0)
    assert whole.usable(1) and not whole.usable(2)  # at least one token is prefilled


def test_the_store_keeps_its_capacity_evicting_the_least_recently_used() -> None:
    ids = torch.arange(3 * BLOCK)[None]
    cache = PrefixCache(capacity=4 * BLOCK)
    layers = [(torch.randn(1, 2, 3 * BLOCK, 4), torch.randn(1, 2, 3 * BLOCK, 4)) for _ in range(2)]
    a = prompt_key({"input_ids": ids}, set())
    b = prompt_key({"input_ids": ids + 1000}, set())
    assert cache.insert(a, layers) == 3 and cache.match(a) == 2  # the last block: kept, not matched
    taken = cache.take(a, 2)
    assert torch.equal(taken[1][0], layers[1][0][:, :, : 2 * BLOCK])
    assert torch.equal(taken[0][1], layers[0][1][:, :, : 2 * BLOCK])
    cache.insert(b, layers)
    assert len(cache) == 4 and cache.match(b) == 2
    assert cache.match(a) == 0  # a's blocks were the least recently used


def test_hits_on_metrics_and_health_say_it_is_on(tiny_checkpoint: Callable[[str], Path]) -> None:
    """The engine's counters through the server's real /metrics collector; /health's kv section."""
    from omega_server.metrics import Metrics
    from prometheus_client.parser import text_string_to_metric_families

    from tests.contracts.server_bodies import body

    eng = load(tiny_checkpoint("qwen2_5_vl"), True, prefix_cache_tokens=4096)
    try:
        for r in REQUESTS[:2]:
            eng.generate_sync(eng.prepare(r), timeout=120)
        text = Metrics(stats=lambda: eng.stats).render().decode()
        kv = body("ready", eng.info)["kv"]
    finally:
        eng.shutdown()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["omega_server_prefix_cache_queries_total"] == 2
    assert samples["omega_server_prefix_cache_hits_total"] == 1
    assert samples["omega_server_prefix_cache_hit_tokens_total"] == eng.stats.prefix_cache_hit_tokens > 0
    assert kv["prefix_caching"] is True and kv["prefix_cache_tokens"] == 4096


def test_off_on_the_dynamic_cache_and_when_disabled(tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint("qwen2_5_vl")
    for config in (
        EngineConfig(model_path=str(path), attn_impl="sdpa", kv_cache="dynamic"),
        EngineConfig(model_path=str(path), attn_impl="sdpa", kv_cache="static", prefix_caching=False),
    ):
        eng = Engine.load(config)
        try:
            assert not eng.info.prefix_caching and eng.info.prefix_cache_tokens == 0
            assert eng.prepare(REQUESTS[0]).prefix_key is None
        finally:
            eng.shutdown()


def test_the_store_gets_what_the_kv_budget_holds_beyond_the_slots(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """Sized from memory, the prefix cache never takes a slot's memory: only what is left over."""
    from omega_server.engine.kv_budget import GIB, DeviceMemory, bytes_per_token

    from tests.omega_server.test_kv_budget import probe

    path = tiny_checkpoint("qwen2_5_vl")
    eng = load(path, True, max_batch_size=1)
    per_token = bytes_per_token(eng._loaded.model.config, eng._loaded.model.dtype.itemsize)
    eng.shutdown()
    length = 512
    for batch, slots, spare in ((2, 2, 300), (4, 2, 300), (2, 2, 0)):  # fits, lowered, nothing over
        budget = (slots * length + spare) * per_token
        memory = DeviceMemory(total=10 * GIB, used=int(10 * GIB * 0.9) - budget)
        eng = load(path, True, max_batch_size=batch, max_model_length=length, memory_probe=probe(memory, []))
        try:
            assert eng.info.kv_slots == slots
            assert eng.info.prefix_caching is (spare > 0) and eng.info.prefix_cache_tokens == spare
        finally:
            eng.shutdown()
