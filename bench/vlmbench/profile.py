"""Where a decode step's time goes: wall time vs GPU kernel time, kernel launches, the top operators.

Drives the model directly (prefill one benchmark prompt, repeated to the batch size, then greedy decode
steps with transformers' own cache), outside the engine, so the figures are the model code's floor
under any engine that calls it eagerly. ``wall - gpu`` per step is host time the GPU sits idle (Python,
launches, syncs): CUDA graphs or torch.compile remove it. ``gpu`` far above the roofline's bytes/bandwidth
means slow kernels (e.g. many tiny ones).
"""

from __future__ import annotations

import time
from typing import Any


def summarize_events(
    events: list[tuple[str, float, float, int, bool]], steps: int, top: int = 12
) -> dict[str, Any]:
    """Profile rows ``(name, self_cpu_us, device_us, calls, is_kernel)`` over ``steps`` steps -> per step.

    GPU busy time is the sum over kernels only (operator rows carry their kernels' time as well).
    ``top_kernels``: kernels by GPU time; ``top_gpu_ops``: operators by the GPU time of their kernels;
    ``top_cpu_ops``: operators by their own host time.
    """
    steps = max(steps, 1)
    kernels = [e for e in events if e[4]]
    ops = [e for e in events if not e[4]]

    def rows(items: list[tuple[str, float, float, int, bool]], index: int, unit: str) -> list[dict[str, Any]]:
        ordered = sorted(items, key=lambda e: float(e[index]), reverse=True)[:top]
        return [
            {
                "op": e[0],
                unit: round(float(e[index]) / 1000 / steps, 3),
                "calls_per_step": round(e[3] / steps, 1),
            }
            for e in ordered
        ]

    return {
        "gpu_ms_per_step": round(sum(e[2] for e in kernels) / 1000 / steps, 3),
        "kernels_per_step": round(sum(e[3] for e in kernels) / steps, 1),
        "top_kernels": rows(kernels, 2, "gpu_ms_per_step"),
        "top_gpu_ops": rows(ops, 2, "gpu_ms_per_step"),
        "top_cpu_ops": rows(ops, 1, "cpu_ms_per_step"),
    }


def profile_decode(model: Any, inputs: dict[str, Any], *, batch: int, steps: int = 8) -> dict[str, Any]:
    """Prefill ``inputs`` (one prompt) repeated ``batch`` times, then time and profile decode steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    device = model.get_input_embeddings().weight.device
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    batched = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value.to(device)
        if value.is_floating_point():
            value = value.to(model.dtype)
        # pixel tensors are flattened patches of all images: repeat along dim 0 like the batch
        batched[key] = value.repeat(batch, *([1] * (value.dim() - 1)))
    import inspect

    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    inner: Any = getattr(model, "model", None)
    mrope = hasattr(inner, "rope_deltas")
    with torch.inference_mode():
        if mrope:
            inner.rope_deltas = None  # computed afresh from this prompt's image
        out = model(**batched, use_cache=True, return_dict=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        token = out.logits[:, -1:].argmax(-1)
        mask = batched.get("attention_mask")
        length = int(batched["input_ids"].shape[1])
        delta = inner.rope_deltas if mrope and inner.rope_deltas is not None else None
        position = [length]

        def step(tok: Any, mask: Any) -> tuple[Any, Any]:
            # as the engine's decode: explicit positions (M-RoPE: text position + the prompt's delta)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            pos = torch.full((batch, 1), position[0], dtype=torch.long, device=device)
            position_ids = (
                (pos + delta.reshape(-1, 1)[:1])[None].expand(3, batch, 1) if delta is not None else pos
            )
            o = model(
                input_ids=tok,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=True,
                return_dict=True,
                **{cache_kw: cache},
            )
            position[0] += 1
            return o.logits[:, -1:].argmax(-1), mask

        for _ in range(3):
            token, mask = step(token, mask)
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            token, mask = step(token, mask)
        sync()
        wall = (time.perf_counter() - started) / steps
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                token, mask = step(token, mask)
            sync()
    events = [
        (
            e.key,
            float(e.self_cpu_time_total),
            float(getattr(e, "self_device_time_total", 0.0) or 0.0),
            int(e.count),
            getattr(getattr(e, "device_type", None), "name", "") == "CUDA",
        )
        for e in prof.key_averages()
    ]
    summary = summarize_events(events, steps)
    summary.update(
        batch=batch,
        wall_ms_per_step=round(wall * 1000, 3),
        tokens_per_s=round(batch / wall, 1),
    )
    if cuda:
        summary["gpu_idle_fraction"] = round(
            max(0.0, 1 - summary["gpu_ms_per_step"] / summary["wall_ms_per_step"]), 3
        )
    return summary
