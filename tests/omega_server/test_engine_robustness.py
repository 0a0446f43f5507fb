"""The engine under failure: cancelled queued requests, per-request errors, crashes, stalls, out of memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omega_server.engine import Engine, EngineConfig, QueueFullError, StepOutput

from tests.omega_server.test_engine import chat, collect

pytestmark = pytest.mark.timeout(300)


def load(tiny_checkpoint: Callable[[str], Path], arch: str = "llava", **config: Any) -> Engine:
    return Engine.load(EngineConfig(model_path=str(tiny_checkpoint(arch)), attn_impl="sdpa", **config))


async def wait_for(cond: Callable[[], bool], seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def test_cancelled_queued_requests_leave_the_queue_at_once(tiny_checkpoint: Callable[[str], Path]) -> None:
    """Two queued requests whose clients gave up free their places: a third is admitted, not a 429."""
    eng = load(tiny_checkpoint, max_batch_size=1, max_queue=2)

    async def main() -> tuple[int, list[StepOutput], list[StepOutput]]:
        long_run = eng.stream(eng.prepare(chat(0, max_tokens=300)))
        first = await anext(long_run)  # the one slot is taken
        queued = [asyncio.ensure_future(collect(eng, eng.prepare(chat(i, max_tokens=3)))) for i in (1, 2)]
        await wait_for(lambda: eng.stats.queue_depth == 2)
        for task in queued:
            task.cancel()  # what a client timeout does
        await asyncio.gather(*queued, return_exceptions=True)
        depth = eng.stats.queue_depth  # read while the long request still runs
        newcomer = asyncio.ensure_future(collect(eng, eng.prepare(chat(3, max_tokens=3))))
        await asyncio.sleep(0)  # queued behind the long request: no QueueFullError
        rest = [first] + [o async for o in long_run]
        return depth, rest, await newcomer

    try:
        depth, long_outs, newcomer = asyncio.run(main())
        assert depth == 0
        assert long_outs[-1].completion_tokens == 300
        assert len(newcomer) == 3 and newcomer[-1].finished
    except QueueFullError as exc:  # today: the cancelled entries still hold their places
        pytest.fail(f"a cancelled queued request kept its place: {exc}")
    finally:
        eng.shutdown()


def test_a_detokenizer_error_fails_that_request_only(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception while decoding one request's tokens ends that request; the batch goes on."""
    from omega_server.engine import emit
    from omega_server.engine.errors import EngineError

    eng = load(tiny_checkpoint, max_batch_size=2)
    real = emit.start

    def start(seq: Any, runner: Any) -> None:
        real(seq, runner)
        if seq.prepared.params.max_tokens == 7:  # the bad request
            text = seq.text
            add = text.add

            def broken(token: int) -> Any:
                if len(text.token_ids) >= 2:
                    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
                return add(token)

            text.add = broken

    monkeypatch.setattr(emit, "start", start)

    async def main() -> tuple[BaseException | None, list[StepOutput]]:
        async def bad() -> BaseException | None:
            try:
                await collect(eng, eng.prepare(chat(1, max_tokens=7)))
            except EngineError as exc:
                return exc
            return None

        return await asyncio.gather(bad(), collect(eng, eng.prepare(chat(2, max_tokens=20, ignore_eos=True))))

    try:
        err, good = asyncio.run(main())
        assert isinstance(err, EngineError) and err.code == "generation_failed"
        assert "UnicodeDecodeError" in err.message
        assert len(good) == 20 and good[-1].finished  # the other request finished normally
        assert eng.alive
        assert len(run(eng, chat(0, max_tokens=3))) == 3
    finally:
        eng.shutdown()


def run(eng: Engine, req: Any) -> list[StepOutput]:
    async def main() -> list[StepOutput]:
        return await collect(eng, eng.prepare(req))

    return asyncio.run(main())


def test_a_crash_tells_requests_taken_off_the_queue_but_not_prefilled(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker crash between taking requests off the queue and prefilling them ends them with an
    error (EngineDeadError), instead of leaving their clients waiting forever."""
    import omega_server.engine.admission as admission
    from omega_server.engine import EngineDeadError

    eng = load(tiny_checkpoint, max_batch_size=4, kv_cache="static")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in prefill grouping")

    monkeypatch.setattr(admission, "prefill_groups", broken)

    async def main() -> list[BaseException | list[StepOutput]]:
        # queued together before the worker wakes: admitted (and grouped) as one lot
        with eng._cond:
            tasks = [
                asyncio.ensure_future(collect(eng, eng.prepare(chat(i, max_tokens=3)))) for i in range(2)
            ]
            await asyncio.sleep(0.05)
        async with asyncio.timeout(30):
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    try:
        results = asyncio.run(main())
        assert all(isinstance(r, EngineDeadError) for r in results), results
        assert "a bug in prefill grouping" in str(results[0])
        assert not eng.alive
    finally:
        eng.shutdown()


def test_a_stuck_worker_is_reported_stalled(tiny_checkpoint: Callable[[str], Path]) -> None:
    """``stalled_seconds`` grows while the worker is stuck in a step with work pending, and is 0 idle."""
    import threading

    eng = load(tiny_checkpoint)
    assert eng.stalled_seconds() == 0.0
    release = threading.Event()
    real = eng._runner.launch

    def stuck() -> Any:
        release.wait(30)
        return real()

    eng._runner.launch = stuck  # type: ignore[method-assign]

    async def main() -> float:
        task = asyncio.ensure_future(collect(eng, eng.prepare(chat(0, max_tokens=2))))
        await asyncio.sleep(0.6)
        stalled = eng.stalled_seconds()
        release.set()
        await task
        return stalled

    try:
        assert asyncio.run(main()) >= 0.4
        for _ in range(200):
            if eng.stalled_seconds() == 0.0:
                break
            threading.Event().wait(0.01)
        assert eng.stalled_seconds() == 0.0  # idle again
    finally:
        eng.shutdown()


def test_out_of_memory_in_a_prefill_fails_that_request_with_retry_and_the_engine_goes_on(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    import torch
    from omega_server.engine.errors import OutOfMemoryError
    from omega_server.errors import from_engine_error

    eng = load(tiny_checkpoint, kv_cache="static")
    real = eng._runner._prefill_pass
    calls = [0]

    def prefill_pass(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    eng._runner._prefill_pass = prefill_pass  # type: ignore[method-assign]
    try:
        with pytest.raises(OutOfMemoryError) as info:
            run(eng, chat(0, max_tokens=3))
        assert info.value.code == "out_of_memory" and info.value.retry_after > 0
        http = from_engine_error(info.value)
        assert http.status == 503 and int(http.headers["Retry-After"]) >= 1
        assert eng.alive and eng.stats.errors_total == 1 and eng.stats.running == 0
        assert len(run(eng, chat(0, max_tokens=3))) == 3  # the engine goes on
    finally:
        eng.shutdown()


def test_live_is_503_when_the_worker_is_stuck_with_work_pending(request: pytest.FixtureRequest) -> None:
    import threading

    import httpx

    from tests.omega_server.live import ThreadServer, image_message, tiny

    server = ThreadServer(
        {"MODEL_PATH": str(tiny(request)), "ATTN_IMPL": "sdpa", "WORKER_STALL_SECONDS": "0.3"}
    ).start()
    release = threading.Event()
    runner = server.engine._runner
    real = runner.launch
    runner.launch = lambda: (release.wait(30), real())[1]
    try:
        assert httpx.get(f"{server.url}/live").json() == {"status": "alive"}
        body = {"messages": [image_message()], "max_tokens": 2}
        chat = threading.Thread(
            target=httpx.post,
            args=(f"{server.url}/v1/chat/completions",),
            kwargs={"json": body, "timeout": 60},
        )
        chat.start()
        live = None
        for _ in range(300):
            live = httpx.get(f"{server.url}/live")
            if live.status_code == 503:
                break
            threading.Event().wait(0.02)
        assert live is not None and live.status_code == 503 and live.json()["status"] == "stalled"
        release.set()
        chat.join(60)
        for _ in range(300):
            if httpx.get(f"{server.url}/live").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert httpx.get(f"{server.url}/live").json() == {"status": "alive"}
    finally:
        release.set()
        server.stop()


def test_pixel_values_are_dropped_once_the_request_is_prefilled(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    eng = load(tiny_checkpoint, "qwen2_5_vl")

    async def main() -> tuple[set[str], set[str]]:
        prepared = eng.prepare(chat(1, max_tokens=30, ignore_eos=True))
        before = set(prepared.inputs)
        agen = eng.stream(prepared)
        await anext(agen)  # prefilled: the first token is out, decoding goes on
        during = set(prepared.inputs)
        await agen.aclose()
        return before, during

    try:
        before, during = asyncio.run(main())
        assert "pixel_values" in before
        assert during == {"input_ids"}
    finally:
        eng.shutdown()


def test_requests_are_prepared_several_at_once_each_on_its_own_processor(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    """While one preprocessing call holds a processor, another request is prepared (no global lock)."""
    import threading

    eng = load(tiny_checkpoint, "qwen2_5_vl", preprocess_workers=2)
    try:
        done = threading.Event()
        with eng._prep_pool.borrow() as held:  # a slow preprocessing call in flight
            assert held is not eng._loaded.processor
            worker = threading.Thread(target=lambda: (eng.prepare(chat(1)), done.set()))
            worker.start()
            assert done.wait(60), "a second request waited for the first one's preprocessing"
        worker.join()
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(eng.prepare(chat(i % 3)).prompt_tokens))
            for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == sorted(eng.prepare(chat(i % 3)).prompt_tokens for i in range(6))
    finally:
        eng.shutdown()
