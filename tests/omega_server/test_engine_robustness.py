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

