"""The engine on tiny checkpoints: continuous batching equals generate(), sampling, stops, limits, errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from omega_server.engine import (
    Engine,
    EngineConfig,
    EngineDeadError,
    GenerationRequest,
    InvalidRequestError,
    PreparedRequest,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    StepOutput,
)
from PIL import Image

pytestmark = pytest.mark.timeout(300)


def chat(i: int, *, max_tokens: int = 10, image: bool = True, **params: Any) -> GenerationRequest:
    """A chat whose prompt length and image size vary with i (so batched rows need padding)."""
    content: list[dict[str, Any]] = []
    if image:
        content.append(
            {"type": "image", "image": Image.new("RGB", (36 + 9 * i, 28 + 6 * i), (20 * i, 90, 200))}
        )
    content.append({"type": "text", "text": "describe " + "this " * (i + 1)})
    return GenerationRequest(
        messages=[{"role": "user", "content": content}],
        params=SamplingParams(max_tokens=max_tokens, temperature=params.pop("temperature", 0.0), **params),
    )


def reference(engine: Engine, req: GenerationRequest) -> list[int]:
    """Greedy tokens of plain transformers generate() for one request, unbatched."""
    prepared = engine.prepare(req)
    model = engine._loaded.model
    with torch.no_grad():
        out = model.generate(**prepared.inputs, max_new_tokens=req.params.max_tokens, do_sample=False)
    return list(out[0, prepared.prompt_tokens :].tolist())


async def collect(engine: Engine, prepared: PreparedRequest) -> list[StepOutput]:
    return [out async for out in engine.stream(prepared)]


def run_concurrently(engine: Engine, reqs: list[GenerationRequest]) -> list[list[StepOutput]]:
    async def main() -> list[list[StepOutput]]:
        return list(await asyncio.gather(*(collect(engine, engine.prepare(r)) for r in reqs)))

    return asyncio.run(main())


def tokens(outs: list[StepOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Callable[[str], Path]) -> Iterator[Engine]:
    eng = Engine.load(
        EngineConfig(
            model_path=str(tiny_checkpoint("qwen2_5_vl")), attn_impl="sdpa", max_batch_size=4, max_queue=8
        )
    )
    yield eng
    eng.shutdown()


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen3_vl_moe", "llava", "idefics3"])
def test_batched_greedy_equals_generate(
    arch: str, kv_cache: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    eng = Engine.load(
        EngineConfig(
            model_path=str(tiny_checkpoint(arch)), attn_impl="sdpa", max_batch_size=3, kv_cache=kv_cache
        )
    )
    assert eng.info.kv_cache == kv_cache
    assert eng.info.cuda_graphs is False  # CPU
    try:
        # 5 requests, batch 3: requests join and leave the running batch between decode steps.
        reqs = [chat(i, max_tokens=6 + 2 * i, image=i != 2) for i in range(5)]
        results = run_concurrently(eng, reqs)
        for req, outs in zip(reqs, results, strict=True):
            assert tokens(outs) == reference(eng, req)
            last = outs[-1]
            assert last.finished
            # random weights may pick EOS early: then generate() stopped there too
            expected = "length" if last.completion_tokens == req.params.max_tokens else "stop"
            assert last.finish_reason == expected
            assert all(not o.finished for o in outs[:-1])
        assert eng.stats.max_batch_seen == 3
        assert eng.stats.requests_batched_total >= 2
        assert eng.stats.decode_passes < sum(r.params.max_tokens for r in reqs)  # passes were shared
    finally:
        eng.shutdown()


def test_single_request_equals_generate_and_reports_usage(engine: Engine) -> None:
    req = chat(1, max_tokens=12)
    outs = run_concurrently(engine, [req])[0]
    assert tokens(outs) == reference(engine, req)
    last = outs[-1]
    assert last.completion_tokens == 12 == len(outs)
    assert last.prompt_tokens == engine.prepare(req).prompt_tokens
    assert last.finish_reason == "length"


def test_info_reports_real_backend_and_devices(engine: Engine) -> None:
    info = engine.info
    assert info.attn == engine._loaded.model.config._attn_implementation == "sdpa"
    assert info.attn_requested == "sdpa"
    assert info.flash_attn["loaded"] is False
    assert info.dtype == "torch.float32"
    assert info.devices == ["cpu"] and info.device_names == ["cpu"]
    assert info.model_type == "qwen2_5_vl"
    assert (info.max_batch_size, info.max_model_length) == (4, 8192)
    assert info.load_seconds > 0


def test_batch_observer_sees_every_forward_pass(engine: Engine) -> None:
    seen: list[int] = []
    engine.batch_observer = seen.append
    before = engine.stats.forward_passes
    try:
        run_concurrently(engine, [chat(i, max_tokens=5) for i in range(4)])
    finally:
        engine.batch_observer = None
    assert len(seen) == engine.stats.forward_passes - before
    assert max(seen) >= 2 and all(1 <= n <= 4 for n in seen)


def test_stop_string_cuts_text_and_finishes(engine: Engine) -> None:
    full = run_concurrently(engine, [chat(3, max_tokens=16)])[0]
    text = "".join(o.text for o in full)
    # a stop string taken from the middle of what greedy decoding produces
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if text.find(text[i : i + 2]) == i)
    cut = text.index(stop)
    outs = run_concurrently(engine, [chat(3, max_tokens=16, stop=(stop,))])[0]
    assert "".join(o.text for o in outs) == text[:cut]
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].completion_tokens < 16


def test_eos_finishes_with_stop(engine: Engine) -> None:
    req = chat(0, max_tokens=10)
    greedy = tokens(run_concurrently(engine, [req])[0])
    runner = engine._runner
    saved = runner.eos_ids
    runner.eos_ids = {greedy[3]} if greedy[3] not in greedy[:3] else {greedy[0]}
    try:
        outs = run_concurrently(engine, [req])[0]
        ignored = run_concurrently(engine, [chat(0, max_tokens=10, ignore_eos=True)])[0]
    finally:
        runner.eos_ids = saved
    assert outs[-1].finish_reason == "stop"
    assert tokens(outs) == greedy[: len(outs)] and len(outs) <= 4
    assert tokens(ignored) == greedy and ignored[-1].finish_reason == "length"


def test_seeded_sampling_is_reproducible(engine: Engine) -> None:
    reqs = [chat(1, max_tokens=12, temperature=1.5, top_p=0.9, seed=s) for s in (7, 7, 8)]
    a, b, c = (tokens(o) for o in run_concurrently(engine, reqs))
    assert a == b
    assert a != c


def test_out_of_range_seed_is_refused_and_the_engine_keeps_serving(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError) as err:
        engine.prepare(chat(1, max_tokens=3, temperature=1.0, seed=10**30))
    assert err.value.param == "seed"
    # A request that got past validation anyway (the worker seeds inside its error handling).
    prepared = engine.prepare(chat(1, max_tokens=3, temperature=1.0, seed=1))
    object.__setattr__(prepared.params, "seed", 10**30)
    with pytest.raises(Exception, match="generation failed"):
        asyncio.run(collect(engine, prepared))
    assert engine.alive
    assert len(tokens(run_concurrently(engine, [chat(1, max_tokens=3)])[0])) == 3


def test_prompt_too_long_names_both_numbers(tiny_checkpoint: Callable[[str], Path], engine: Engine) -> None:
    prompt = engine.prepare(chat(0, max_tokens=1)).prompt_tokens
    engine.config.max_model_length, saved = prompt + 5, engine.config.max_model_length
    try:
        engine.prepare(chat(0, max_tokens=5))  # exactly fits
        with pytest.raises(PromptTooLongError) as err:
            engine.prepare(chat(0, max_tokens=6))
    finally:
        engine.config.max_model_length = saved
    msg = err.value.message
    assert f"{prompt} tokens" in msg and "max_tokens is 6" in msg and f"MAX_MODEL_LENGTH={prompt + 5}" in msg
    assert err.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("messages", "params", "param"),
    [
        ([], {}, "messages"),
        ([{"role": "robot", "content": "hi"}], {}, "messages.0.role"),
        ([{"role": "user", "content": [{"type": "audio", "audio": b""}]}], {}, "messages.0.content.0.type"),
        (
            [{"role": "user", "content": [{"type": "image", "image": "not an image"}]}],
            {},
            "messages.0.content.0.type",
        ),
        ([{"role": "user", "content": ""}], {}, "messages"),
        ([{"role": "user", "content": "hi"}], {"max_tokens": 0}, "max_tokens"),
        ([{"role": "user", "content": "hi"}], {"max_tokens": 4, "temperature": -1.0}, "temperature"),
        ([{"role": "user", "content": "hi"}], {"max_tokens": 4, "top_p": 0.0}, "top_p"),
        ([{"role": "user", "content": "hi"}], {"max_tokens": 4, "stop": ("",)}, "stop"),
    ],
)
def test_bad_requests_are_typed_and_harmless(
    engine: Engine, messages: list[dict[str, Any]], params: dict[str, Any], param: str
) -> None:
    sampling = SamplingParams(**{"max_tokens": 4, **params})
    with pytest.raises(InvalidRequestError) as err:
        engine.prepare(GenerationRequest(messages=messages, params=sampling))
    assert err.value.param == param
    assert engine.alive
    assert len(run_concurrently(engine, [chat(0, max_tokens=2)])[0]) == 2


def test_too_many_images(engine: Engine) -> None:
    image = Image.new("RGB", (32, 32))
    content = [{"type": "image", "image": image}] * (engine.config.max_images_per_request + 1)
    with pytest.raises(InvalidRequestError, match="too many images"):
        engine.prepare(
            GenerationRequest([{"role": "user", "content": content}], SamplingParams(max_tokens=2))
        )


def test_text_only_and_multi_turn_chats(engine: Engine) -> None:
    req = GenerationRequest(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            {"role": "assistant", "content": "hi"},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": Image.new("L", (50, 40))},
                    {"type": "text", "text": "?"},
                ],
            },
        ],
        params=SamplingParams(max_tokens=6, temperature=0.0),
    )
    text_only = chat(2, max_tokens=6, image=False)
    a, b = run_concurrently(engine, [req, text_only])
    assert tokens(a) == reference(engine, req)
    assert tokens(b) == reference(engine, text_only)


def test_cancelling_the_stream_cancels_generation(engine: Engine) -> None:
    async def main() -> int:
        agen = engine.stream(engine.prepare(chat(0, max_tokens=400)))
        got = 0
        async for _ in agen:
            got += 1
            if got == 3:
                break
        await agen.aclose()  # what a client disconnect does
        for _ in range(200):
            if engine.stats.running == 0:
                break
            await asyncio.sleep(0.01)
        return got

    before = engine.stats.completion_tokens_total
    assert asyncio.run(main()) == 3
    assert engine.stats.running == 0
    assert engine.stats.completion_tokens_total - before < 400
    assert len(run_concurrently(engine, [chat(0, max_tokens=2)])[0]) == 2


def test_queue_full_raises_and_engine_recovers(tiny_checkpoint: Callable[[str], Path]) -> None:
    eng = Engine.load(
        EngineConfig(
            model_path=str(tiny_checkpoint("llava")), attn_impl="sdpa", max_batch_size=1, max_queue=1
        )
    )

    async def main() -> tuple[list[StepOutput], list[StepOutput], BaseException | None]:
        long_run = eng.stream(eng.prepare(chat(0, max_tokens=300)))
        first = await anext(long_run)  # running now: the batch (size 1) is full
        waiting = asyncio.ensure_future(collect(eng, eng.prepare(chat(1, max_tokens=3))))
        for _ in range(100):
            if eng.stats.queue_depth == 1:
                break
            await asyncio.sleep(0.005)
        rejected: BaseException | None = None
        try:
            await collect(eng, eng.prepare(chat(2, max_tokens=3)))
        except QueueFullError as exc:
            rejected = exc
        rest = [first] + [o async for o in long_run]
        return rest, await waiting, rejected

    try:
        long_outs, waited, rejected = asyncio.run(main())
        assert isinstance(rejected, QueueFullError)
        assert rejected.code == "queue_full" and "MAX_QUEUE=1" in rejected.message
        assert long_outs[-1].completion_tokens == 300
        assert len(waited) == 3
    finally:
        eng.shutdown()


def test_shutdown_fails_streams_with_engine_dead(tiny_checkpoint: Callable[[str], Path]) -> None:
    eng = Engine.load(EngineConfig(model_path=str(tiny_checkpoint("llava")), attn_impl="sdpa"))
    eng.shutdown()
    assert not eng.alive

    async def main() -> None:
        await collect(eng, eng.prepare(chat(0)))

    with pytest.raises(EngineDeadError):
        asyncio.run(main())


def test_prepare_is_thread_safe(engine: Engine) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                results.append(engine.prepare(chat(i % 3)).prompt_tokens)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 30


def test_generate_sync_for_plain_threads(engine: Engine) -> None:
    req = chat(1, max_tokens=5)
    outs = engine.generate_sync(engine.prepare(req), timeout=60)
    assert tokens(outs) == reference(engine, req)


def test_static_slot_cache_with_eager_attention_and_cancellation(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """Slots are freed and compacted when a sequence in the middle of the batch leaves early."""
    eng = Engine.load(
        EngineConfig(
            model_path=str(tiny_checkpoint("qwen2_5_vl")),
            attn_impl="eager",
            max_batch_size=4,
            kv_cache="static",
        )
    )
    try:
        reqs = [chat(i, max_tokens=[3, 14, 6, 11, 9][i]) for i in range(5)]

        async def main() -> list[list[StepOutput]]:
            async def cancelled_early() -> None:
                agen = eng.stream(eng.prepare(chat(4, max_tokens=50)))
                async for _ in agen:
                    break
                await agen.aclose()

            task = asyncio.ensure_future(cancelled_early())
            results = await asyncio.gather(*(collect(eng, eng.prepare(r)) for r in reqs))
            await task
            return list(results)

        for req, outs in zip(reqs, asyncio.run(main()), strict=True):
            assert tokens(outs) == reference(eng, req)
        assert eng.stats.max_batch_seen == 4
    finally:
        eng.shutdown()


def test_runner_choice_per_backend(engine: Engine) -> None:
    from omega_server.engine.load import make_runner
    from omega_server.engine.runner import Runner
    from omega_server.engine.static_runner import StaticRunner

    static = EngineConfig(model_path="unused", kv_cache="static")
    # flash_attention_2 decodes on the slot cache too (issue 13: kernels.flash_decode)
    assert isinstance(make_runner(static, engine._loaded, "flash_attention_2"), StaticRunner)
    assert isinstance(make_runner(static, engine._loaded, "sdpa"), StaticRunner)
    assert (
        type(make_runner(EngineConfig(model_path="unused", kv_cache="dynamic"), engine._loaded, "sdpa"))
        is Runner
    )
    assert (
        type(make_runner(EngineConfig(model_path="unused"), engine._loaded, "sdpa")) is Runner
    )  # auto on CPU
    with pytest.raises(ValueError, match="kv_cache must be"):
        make_runner(EngineConfig(model_path="unused", kv_cache="paged"), engine._loaded, "sdpa")


def test_bucket_sizes() -> None:
    from omega_server.engine.kvslots import bucket

    assert [bucket(n, 16) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 16]
    assert bucket(300, 8192, floor=256) == 512 and bucket(10, 8192, floor=256) == 256


def test_static_cache_failing_its_warm_up_falls_back_to_dynamic(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import omega_server.engine.load as load_module
    from omega_server.engine.static_runner import StaticRunner

    real = load_module.warm_runner

    def warm(runner: Any, loaded: Any) -> None:
        if isinstance(runner, StaticRunner):
            raise RuntimeError("out of memory while allocating the slot cache")
        real(runner, loaded)

    monkeypatch.setattr(load_module, "warm_runner", warm)
    eng = Engine.load(
        EngineConfig(model_path=str(tiny_checkpoint("llava")), attn_impl="sdpa", kv_cache="static")
    )
    try:
        assert eng.info.kv_cache == "dynamic" and eng.info.cuda_graphs is False
        assert len(run_concurrently(eng, [chat(0, max_tokens=3)])[0]) == 3
    finally:
        eng.shutdown()


def test_a_device_error_in_a_decode_step_ends_the_running_streams(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sticky device error stops the engine; the requests in the batch get EngineDeadError, not silence."""
    eng = Engine.load(EngineConfig(model_path=str(tiny_checkpoint("llava")), attn_impl="sdpa"))
    real = eng._runner.launch
    steps = [0]

    def launch() -> Any:
        steps[0] += 1
        if steps[0] == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real()

    monkeypatch.setattr(eng._runner, "launch", launch)

    async def main() -> tuple[list[StepOutput], BaseException | None]:
        got: list[StepOutput] = []
        try:
            async with asyncio.timeout(60):
                async for out in eng.stream(eng.prepare(chat(0, max_tokens=50))):
                    got.append(out)
        except EngineDeadError as exc:
            return got, exc
        return got, None

    try:
        got, err = asyncio.run(main())
        assert (
            isinstance(err, EngineDeadError) and "device error" in err.message and "CUDA error" in err.message
        )
        assert 1 <= len(got) < 50 and not got[-1].finished
        eng._thread.join(30)  # the worker stops the engine after failing the batch
        assert not eng.alive and eng.stats.errors_total == 1
    finally:
        eng.shutdown()
