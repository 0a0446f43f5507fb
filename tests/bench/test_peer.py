"""The peer: transformers' continuous batching (generate_batch) and transformers serve, on a tiny model on
the CPU, and the projection of a capped cell to the full output length."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.vlmbench import peer, shapes
from bench.vlmbench.scenarios import Scenario
from bench.vlmbench.stats import RequestTiming

#: a paged cache of 32 blocks: transformers' default sizes it from free memory (90% of the host's RAM on a CPU)
SMALL_CB = {"num_blocks": 32, "max_batch_tokens": 512}


def _stream(submitted: float, first: float, tokens: int, step: float) -> RequestTiming:
    return RequestTiming(submitted=submitted, events=[(first + i * step, 1) for i in range(tokens)])


def test_projection_of_a_batch_that_decodes_together() -> None:
    """4 requests, 16 tokens each, at 10 ms a step together, first tokens at 1 s: to 64 tokens each."""
    timings = [_stream(0.0, 1.0, 16, 0.01) for _ in range(4)]
    p = peer.project_rate(timings, 64)
    assert p["measured"] == pytest.approx(64 / 1.15, rel=1e-3)
    assert p["decode_concurrency"] == pytest.approx(4.0)
    # 48 more steps of 10 ms: 256 tokens in 1.15 + 0.48 s
    assert p["projected"] == pytest.approx(256 / 1.63, rel=1e-3)


def test_projection_of_requests_served_one_at_a_time() -> None:
    """transformers serve runs a VLM's requests in turn: the missing tokens of each come one after another."""
    timings = [_stream(0.0, 0.1 + i * 0.2, 10, 0.01) for i in range(2)]  # decode 0.1-0.19, 0.3-0.39
    p = peer.project_rate(timings, 20)
    assert p["decode_concurrency"] == pytest.approx(1.0)
    measured_s = 0.39
    assert p["measured"] == pytest.approx(20 / measured_s, rel=1e-3)
    assert p["projected"] == pytest.approx(40 / (measured_s + 20 * 0.01), rel=1e-3)


def test_a_cell_that_reached_the_full_length_is_not_projected() -> None:
    timings = [_stream(0.0, 0.5, 8, 0.01) for _ in range(2)]
    p = peer.project_rate(timings, 8)
    assert p["projected"] == p["measured"] and p["decode_concurrency"] is None


def test_text_prompts_are_distinct_ordinary_tokens() -> None:
    shape = shapes.get_shape("tiny_qwen2_5_vl")
    prompts = peer.text_prompts(shape, 80, 3, seed=4)
    assert [len(p) for p in prompts] == [80, 80, 80]
    assert len({tuple(p) for p in prompts}) == 3 and prompts[0][0] != prompts[1][0]
    assert max(max(p) for p in prompts) < shape.vocab_size - len(shapes.SPECIALS)
    assert peer.text_prompts(shape, 80, 1, seed=4) == prompts[:1]


@pytest.fixture(scope="module")
def tiny_model() -> Iterator[Any]:
    model = peer.build_model(shapes.get_shape("tiny_qwen3_vl_moe"), "cpu", "float32", seed=0)
    yield model


def test_generate_batch_cell_times_every_token_on_a_warm_manager(tiny_model: Any) -> None:
    from transformers import ContinuousBatchingConfig

    shape = shapes.get_shape("tiny_qwen3_vl_moe")
    timings, info = peer.generate_batch_cell(
        tiny_model, shape, 80, 3, 5, seed=0, cb=ContinuousBatchingConfig(**SMALL_CB)
    )
    assert len(timings) == 3 and all(t.error is None for t in timings)
    assert all(t.prompt_tokens == 80 and t.tokens == 5 and len(t.events) == 5 for t in timings)
    assert all(t.ttft() is not None and t.ttft() > 0 for t in timings)  # type: ignore[operator]
    assert info["attn"] == "paged|sdpa"  # transformers' own switch to paged attention (no flash-attn here)
    assert (
        info["cb_config_resolved"]["num_blocks"] == 32
        and info["cb_config_resolved"]["max_requests_per_batch"] == 3
    )
    assert info["warm_call_seconds"] > 0 and info["timed_call_seconds"] > 0
    # the manager kept between the two calls is gone, and the model is back on its own attention
    assert getattr(tiny_model, "_cached_continuous_batching_manager", None) is None
    assert tiny_model.config._attn_implementation == "sdpa"


def test_transformers_serve_answers_the_standard_workload(tiny_model: Any) -> None:
    from bench.vlmbench.http_driver import http_cell
    from bench.vlmbench.peer_serve import TransformersServe, fit_chars, serve_unavailable

    assert serve_unavailable() is None
    shape = shapes.get_shape("tiny_qwen3_vl_moe")
    processor = shapes.build_processor(shape, shapes.build_tokenizer(shape.vocab_size))
    chars = fit_chars(processor, 56, 80)
    server = TransformersServe(tiny_model, processor, shape.name, SMALL_CB)
    try:
        server.wait_ready()
        scenario = Scenario("standard", image_size=56, text_chars=chars, output_tokens=4)
        timings, _ = http_cell(
            server.url,
            model=shape.name,
            scenario=scenario,
            concurrency=2,
            time_limit_s=120,
            seed=1,
            warm_up_path="/health",
        )
    finally:
        server.stop()
    assert [t.error for t in timings] == [None, None]
    assert all(t.prompt_tokens == 80 and t.tokens == 4 for t in timings)  # the same prompt as ours
    # one request at a time: the second's first token comes after the first's last
    first, second = sorted(timings, key=lambda t: t.first or 0.0)
    assert first.last is not None and second.first is not None and second.first >= first.last
