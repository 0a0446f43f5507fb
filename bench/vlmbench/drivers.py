"""Drivers: the engine alone (no HTTP), and the plain transformers ``generate()`` baseline.

The engine driver submits ``concurrency`` requests at once through the engine's public surface
(``prepare`` on a worker thread, as the server does, then ``stream``) and records every delta's
arrival. A cell has a time limit: requests still running then are cancelled (the engine drops them
between steps) and the cell reports what arrived, marked incomplete.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from bench.vlmbench.stats import RequestTiming


def sampling_params(max_tokens: int, temperature: float = 0.0) -> Any:
    """Engine SamplingParams for the workload: greedy, EOS ignored when the engine supports it."""
    from omega_server.engine import SamplingParams

    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    extra: dict[str, Any] = {"ignore_eos": True} if "ignore_eos" in fields else {}
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, **extra)


def generation_request(messages: list[dict[str, Any]], max_tokens: int, temperature: float = 0.0) -> Any:
    """An engine GenerationRequest."""
    from omega_server.engine import GenerationRequest

    return GenerationRequest(messages=messages, params=sampling_params(max_tokens, temperature))


async def _one(engine: Any, request: Any, timing: RequestTiming) -> None:
    try:
        prepared = await asyncio.to_thread(engine.prepare, request)
        timing.prompt_tokens = int(prepared.prompt_tokens)
        async for out in engine.stream(prepared):
            timing.events.append((time.perf_counter(), max(len(out.token_ids), 1)))
            if out.finished:
                timing.finish_reason = out.finish_reason
                timing.completion_tokens = int(out.completion_tokens)
    except asyncio.CancelledError:
        timing.error = "cancelled at the cell's time limit"
        raise
    except Exception as exc:
        timing.error = f"{type(exc).__name__}: {exc}"


async def run_engine_cell(engine: Any, requests: Sequence[Any], time_limit_s: float) -> list[RequestTiming]:
    """Submit all ``requests`` at once; return their timings (cancelled ones included)."""
    timings = [RequestTiming(submitted=0.0) for _ in requests]
    tasks = []
    for request, timing in zip(requests, timings, strict=True):
        timing.submitted = time.perf_counter()
        tasks.append(asyncio.create_task(_one(engine, request, timing)))
    _, pending = await asyncio.wait(tasks, timeout=time_limit_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return timings


def wait_idle(engine: Any, timeout_s: float = 60.0) -> bool:
    """Wait until the engine has nothing queued or running (after cancellations)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = engine.stats
        if not getattr(stats, "running", 0) and not getattr(stats, "queue_depth", 0):
            return True
        time.sleep(0.05)
    return False


def engine_cell(engine: Any, requests: Sequence[Any], time_limit_s: float) -> list[RequestTiming]:
    """``run_engine_cell`` on a fresh event loop, then wait for the engine to be idle."""
    timings = asyncio.run(run_engine_cell(engine, requests, time_limit_s))
    wait_idle(engine)
    return timings


# --------------------------------------------------------------------------- generate() baseline


def generate_baseline(
    model: Any,
    processor: Any,
    chats: Sequence[list[dict[str, Any]]],
    max_new_tokens: int,
) -> dict[str, Any]:
    """Plain ``model.generate()`` on one left-padded batch of ``chats`` (what the original server did).

    Greedy, exactly ``max_new_tokens`` new tokens per row. Returns tokens/s, seconds and the batch's
    prompt length. A 2-token generate() runs first, untimed, to warm up.
    """
    import torch

    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    images = [p["image"] for c in chats for m in c for p in m["content"] if p.get("type") == "image"]
    batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    device = model.get_input_embeddings().weight.device
    inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    for key, value in inputs.items():
        if value.is_floating_point():
            inputs[key] = value.to(model.dtype)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    common = {"do_sample": False, "eos_token_id": None, "pad_token_id": tokenizer.pad_token_id}
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, **common)
        sync()
        started = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, **common)
        sync()
        seconds = time.perf_counter() - started
    new_tokens = int(out.shape[0]) * (int(out.shape[1]) - int(inputs["input_ids"].shape[1]))
    return {
        "batch": len(chats),
        "output_tokens": new_tokens,
        "seconds": round(seconds, 3),
        "output_tokens_per_s": round(new_tokens / seconds, 1),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
    }
