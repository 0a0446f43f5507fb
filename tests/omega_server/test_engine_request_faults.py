"""Faults injected into one request (issue 17, "Engine faults"): an exception in its forward pass or in
its image processing fails that request only; a request running beside it finishes and the engine
serves on. (Detokenization: ``test_engine_robustness.test_a_detokenizer_error_fails_that_request_only``;
a fatal device error: ``tests/reliability/test_engine_fatal.py``.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from omega_server.engine import Engine, StepOutput
from omega_server.engine.errors import EngineError, InvalidRequestError

from tests.omega_server.test_engine import chat, collect
from tests.omega_server.test_engine_robustness import load, run

pytestmark = pytest.mark.timeout(300)


def _beside_a_long_request(
    eng: Engine, bad: Callable[[], Any]
) -> tuple[BaseException | None, list[StepOutput]]:
    """Start a 40-token request, run ``bad`` once it streams, return (bad's error, the long request)."""

    async def main() -> tuple[BaseException | None, list[StepOutput]]:
        long_run = eng.stream(eng.prepare(chat(2, max_tokens=40, ignore_eos=True)))
        outs = [await anext(long_run)]  # running: the bad request meets it in the batch
        try:
            await bad()
            err: BaseException | None = None
        except EngineError as exc:
            err = exc
        outs += [o async for o in long_run]
        return err, outs

    return asyncio.run(main())


@pytest.mark.parametrize("kv_cache", ["static", "dynamic"])
def test_an_exception_in_one_requests_forward_pass_fails_that_request_only(
    tiny_checkpoint: Callable[[str], Path], kv_cache: str
) -> None:
    eng = load(tiny_checkpoint, kv_cache=kv_cache, max_batch_size=2)
    runner = eng._runner
    name = "_prefill_pass" if hasattr(runner, "_prefill_pass") else "prefill"
    real = getattr(runner, name)
    calls = [0]

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the second request's prefill (the first is the long one)
            raise RuntimeError("injected: a shape the kernel does not take")
        return real(*args, **kwargs)

    setattr(runner, name, broken)
    try:
        err, good = _beside_a_long_request(eng, lambda: collect(eng, eng.prepare(chat(1, max_tokens=5))))
        assert calls[0] >= 2
        assert isinstance(err, EngineError) and "injected" in err.message, err
        assert len(good) == 40 and good[-1].finished  # the request beside it finished
        assert eng.alive
        # the worker frees the finished row after its last token was delivered: wait for it
        deadline = time.monotonic() + 30
        while eng.stats.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert eng.stats.running == 0
        assert len(run(eng, chat(0, max_tokens=3))) == 3  # and the engine serves on
    finally:
        eng.shutdown()


def test_an_exception_in_one_requests_image_processing_fails_that_request_only(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = load(tiny_checkpoint, max_batch_size=2)
    bad_size = chat(5).messages[0]["content"][0]["image"].size
    with eng._prep_pool.borrow() as processor:
        cls = type(processor.image_processor)  # every copy in the pool has this class
    real = cls.preprocess

    def preprocess(self: Any, images: Any, *args: Any, **kwargs: Any) -> Any:
        flat = images if isinstance(images, list) else [images]
        while flat and isinstance(flat[0], list):
            flat = [im for group in flat for im in group]
        if any(getattr(im, "size", None) == bad_size for im in flat):
            raise ValueError("injected: cannot decode this image's pixels")
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(cls, "preprocess", preprocess)

    async def bad() -> None:
        eng.prepare(chat(5, max_tokens=5))

    try:
        err, good = _beside_a_long_request(eng, bad)
        assert isinstance(err, InvalidRequestError) and "injected" in err.message, err
        assert err.param == "messages"  # a 400 naming the part of the request, not a 500
        assert len(good) == 40 and good[-1].finished
        assert eng.alive
        assert len(run(eng, chat(0, max_tokens=3))) == 3  # other images still process
    finally:
        eng.shutdown()
