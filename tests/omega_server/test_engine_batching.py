"""The static runner's throughput paths on CPU: batched prefill, pipelined decode, batched sampling."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omega_server.engine import Engine, EngineConfig, StepOutput
from omega_server.engine.inputs import collate, prefill_groups
from omega_server.engine.sequence import Seq
from omega_server.engine.static_runner import StaticRunner

from tests.omega_server.test_engine import chat, reference

pytestmark = pytest.mark.timeout(300)


def static_engine(path: Path, **kw: Any) -> Engine:
    return Engine.load(EngineConfig(model_path=str(path), attn_impl="sdpa", kv_cache="static", **kw))


def seq_of(engine: Engine, req: Any, sink: list[Any] | None = None) -> Seq:
    return Seq(
        prepared=engine.prepare(req), loop=None, queue=None, emit=(sink.append if sink is not None else print)
    )


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl_moe", "llava"])
def test_batched_prefill_then_pipelined_steps_equal_generate(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    """Ragged prompts (different lengths and image sizes) prefilled in one pass; steps queued two deep."""
    eng = static_engine(tiny_checkpoint(arch), max_batch_size=4)
    try:
        runner = StaticRunner(eng._loaded.model, eng._loaded.processor, slots=4, width=512, graphs=False)
        reqs = [chat(i, max_tokens=6) for i in (0, 1, 3)]
        seqs = [seq_of(eng, r) for r in reqs]
        with torch.inference_mode():
            runner.prefill_batch(seqs)
            got = [[s.last_token] for s in seqs]
            # each step is queued before the previous one is read (the engine's pipeline, one deep):
            # the sampled tokens are fed back on the device
            pending = runner.launch()
            for i in range(5):
                queued = runner.launch() if i < 4 else None
                for row, t in enumerate(pending.wait()):
                    got[row].append(t)
                if queued is not None:
                    pending = queued
        assert len({int(s.prepared.inputs["input_ids"].shape[1]) for s in seqs}) == 3  # ragged
        for req, toks in zip(reqs, got, strict=True):
            ref = reference(eng, req)  # generate() stops at EOS, the runner does not
            assert toks[: len(ref)] == ref
    finally:
        eng.shutdown()


def test_engine_prefills_waiting_requests_together(tiny_checkpoint: Callable[[str], Path]) -> None:
    """Requests queued while the worker is busy are admitted and prefilled in one pass each group."""
    eng = static_engine(tiny_checkpoint("qwen2_5_vl"), max_batch_size=4)
    try:
        reqs = [chat(i, max_tokens=5 + i, image=i != 2) for i in range(4)]
        results: list[list[StepOutput]] = [[] for _ in reqs]
        done = threading.Semaphore(0)

        def emitter(i: int) -> Callable[[Any], None]:
            def emit(item: Any) -> None:
                results[i].append(item)
                if isinstance(item, BaseException) or item.finished:
                    done.release()

            return emit

        seqs = [
            Seq(prepared=eng.prepare(r), loop=None, queue=None, emit=emitter(i)) for i, r in enumerate(reqs)
        ]
        before = eng.stats.prefill_passes
        with eng._cond:  # the worker cannot take any until all four wait
            for s in seqs:
                eng._submit(s)
        for _ in reqs:
            assert done.acquire(timeout=120)
        # three with images (one group: same input names and patch width) + one text-only
        assert eng.stats.prefill_passes - before == 2
        for req, outs in zip(reqs, results, strict=True):
            assert [t for o in outs for t in o.token_ids] == reference(eng, req)
            assert outs[-1].finished
    finally:
        eng.shutdown()


def test_prefill_groups_respect_keys_and_the_token_budget(tiny_checkpoint: Callable[[str], Path]) -> None:
    eng = static_engine(tiny_checkpoint("qwen2_5_vl"), max_batch_size=2)
    try:
        seqs = [seq_of(eng, chat(i, image=i != 1)) for i in range(4)]
        lengths = [int(s.prepared.inputs["input_ids"].shape[1]) for s in seqs]
        at = {id(s): i for i, s in enumerate(seqs)}
        groups = prefill_groups(seqs, 10**6)
        assert [[at[id(s)] for s in g] for g in groups] == [[0, 2, 3], [1]]
        tight = prefill_groups(seqs, 2 * max(lengths[0], lengths[2]))
        assert [[at[id(s)] for s in g] for g in tight] == [[0, 2], [1], [3]]
        batch = collate([seqs[0].prepared.inputs, seqs[2].prepared.inputs], pad_id=0)
        longest = max(lengths[0], lengths[2])
        assert batch["input_ids"].shape == (2, longest)
        assert batch["attention_mask"].sum(1).tolist() == [lengths[0], lengths[2]]
        assert batch["image_grid_thw"].shape[0] == 2
    finally:
        eng.shutdown()


def test_a_decode_step_reads_the_device_once(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queuing a step reads nothing back to the host (eager MoE forward included); waiting reads once."""
    eng = static_engine(tiny_checkpoint("qwen3_vl_moe"), max_batch_size=4)
    try:
        runner = StaticRunner(eng._loaded.model, eng._loaded.processor, slots=4, width=512, graphs=False)
        seqs = [seq_of(eng, chat(i, temperature=0.8 * i, seed=i)) for i in (0, 1)]
        reads: list[str] = []
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"):
            real = getattr(torch.Tensor, name)

            def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                reads.append(_name)
                return _real(*args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, spy)
        with torch.inference_mode():
            runner.prefill_batch(seqs)
            for _ in range(3):
                reads.clear()
                pending = runner.launch()  # greedy row + sampled row with its own seed
                assert reads == []
                assert len(pending.wait()) == 2
                assert reads == ["tolist"]
    finally:
        eng.shutdown()


def test_a_failed_batched_prefill_falls_back_to_one_by_one(
    tiny_checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = static_engine(tiny_checkpoint("qwen2_5_vl"), max_batch_size=4)
    try:
        calls: list[int] = []

        def broken(seqs: list[Seq]) -> None:
            calls.append(len(seqs))
            raise RuntimeError("no memory for this batch")

        monkeypatch.setattr(eng._runner, "prefill_batch", broken)
        reqs = [chat(i, max_tokens=4) for i in (0, 1)]
        results: list[list[Any]] = [[], []]
        done = threading.Semaphore(0)
        seqs = []
        for i, r in enumerate(reqs):

            def emit(item: Any, i: int = i) -> None:
                results[i].append(item)
                if isinstance(item, BaseException) or item.finished:
                    done.release()

            seqs.append(Seq(prepared=eng.prepare(r), loop=None, queue=None, emit=emit))
        with eng._cond:
            for s in seqs:
                eng._submit(s)
        for _ in reqs:
            assert done.acquire(timeout=120)
        for req, outs in zip(reqs, results, strict=True):
            assert [t for o in outs for t in o.token_ids] == reference(eng, req)
        assert calls == [2] and eng.alive
    finally:
        eng.shutdown()
