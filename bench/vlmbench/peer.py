"""The peer in the same run: transformers' own continuous batching (``model.generate_batch``: paged
attention, its default settings) on the same model shape, batch and token counts, and ``transformers
serve`` over HTTP on the standard workload (``peer_serve``). What a user with the same libraries would
run instead of this server.

How a ``generate_batch`` cell is measured (one per concurrency):
- The model is built with plain transformers from the shape's upstream config (``from_config`` on the
  device, bf16, the default attention; random weights, special tokens silenced like ours), in a process
  without our engine.
- Prompts are text only (``generate_batch`` takes token ids): ``prompt_tokens`` random ids per request,
  different for every request and every call (no shared prefix), the same count as our prompts.
- A warm call first, with the same batch, prompt length and output tokens and ``persistent_manager=True``;
  the timed call reuses that manager, so the peer's start-up (cache allocation, CUDA-graph capture) is
  not counted. ``record_timestamps=True`` gives every token's time: TTFT, ITL and rates are computed by
  the same ``stats.summarize`` as ours, from each request's creation.
- Device time is scarce and the peer is slow (7-315 tok/s on the Omega shape): a cell generates at most
  ``peer_tokens`` tokens per request. Its ``output_tokens_per_s`` is then projected to the full output
  length (``project_rate``): each request's missing tokens at the decode rate it showed, as many at once
  as the peer decoded at once. The step time is assumed to stay as measured while the context grows, so
  the projection can only flatter the peer; the measured rate is kept as ``output_tokens_per_s_measured``.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.vlmbench import roofline, shapes
from bench.vlmbench.context import RunContext, free, peak_gb, reset_peak
from bench.vlmbench.results import make_row
from bench.vlmbench.standard import error_row, log_row
from bench.vlmbench.stats import RequestTiming, summarize


def text_prompts(shape: shapes.ModelShape, prompt_tokens: int, count: int, seed: int) -> list[list[int]]:
    """``count`` prompts of ``prompt_tokens`` random ordinary token ids (no special tokens), each its own."""
    top = shape.vocab_size - len(shapes.SPECIALS)
    return [[random.Random(seed + i).randrange(0, top) for _ in range(prompt_tokens)] for i in range(count)]


def _union_length(spans: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def project_rate(timings: Sequence[RequestTiming], target_tokens: int) -> dict[str, float | None]:
    """Output tok/s of the cell had every request run to ``target_tokens``.

    Measured: all tokens over (last token - first submit), as ``summarize``. Projected: the missing tokens
    come at the median per-request decode rate times the decode concurrency seen (total decode time of the
    requests over the time any of them decoded: about the batch when they decode together, 1 when one at
    a time), after the measured duration.
    """
    m = summarize(timings, target_tokens)
    spans = [
        (t.first, t.last) for t in timings if t.first is not None and t.last is not None and t.last > t.first
    ]
    rates = [r for t in timings if (r := t.decode_rate()) is not None]
    missing = sum(max(target_tokens - t.tokens, 0) for t in timings)
    out: dict[str, float | None] = {
        "measured": m.output_tokens_per_s,
        "projected": m.output_tokens_per_s,
        "decode_concurrency": None,
    }
    if not missing:
        return out
    union = _union_length(spans)
    if not rates or union <= 0 or m.seconds <= 0:
        out["projected"] = None
        return out
    overlap = sum(b - a for a, b in spans) / union
    seconds = m.seconds + missing / (statistics.median(rates) * overlap)
    out["projected"] = round((m.output_tokens + missing) / seconds, 1)
    out["decode_concurrency"] = round(overlap, 2)
    return out


def build_model(shape: shapes.ModelShape, device: str, dtype: str, seed: int) -> Any:
    """The shape's upstream transformers model with random weights on ``device`` (default attention)."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = shapes.build_config(shape, shapes.build_tokenizer(shape.vocab_size))
    target = "cuda:0" if device in ("auto", "cuda") and torch.cuda.is_available() else device
    target = "cpu" if target == "auto" else target
    torch.manual_seed(seed)
    with torch.device(target):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    shapes.silence_special_tokens(model)
    return model


def _cb_config(fields: dict[str, Any] | None) -> Any:
    if fields is None:
        return None
    from transformers import ContinuousBatchingConfig

    return ContinuousBatchingConfig(**fields)


def _resolved(model: Any) -> dict[str, Any]:
    """What the cached manager resolved its defaults to (cache blocks, batch tokens, CUDA graphs...)."""
    manager = getattr(model, "_cached_continuous_batching_manager", None)
    cfg = getattr(manager, "continuous_batching_config", None)
    keys = (
        "block_size",
        "num_blocks",
        "max_batch_tokens",
        "max_memory_percent",
        "max_requests_per_batch",
        "max_blocks_per_request",
        "use_cuda_graph",
        "use_async_batching",
    )
    values = {k: getattr(cfg, k) for k in keys if cfg is not None and hasattr(cfg, k)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}  # as JSON has it


def generate_batch_cell(
    model: Any, shape: shapes.ModelShape, prompt_tokens: int, conc: int, tokens: int, seed: int, cb: Any
) -> tuple[list[RequestTiming], dict[str, Any]]:
    """One warm ``generate_batch`` call, then the timed one on the same (persistent) manager."""
    import copy

    gen = copy.deepcopy(model.generation_config)
    gen.do_sample = False
    attns: list[str] = []
    hook = model.register_forward_pre_hook(
        lambda mod, args: attns.append(str(mod.config._attn_implementation))
    )
    info: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        model.generate_batch(
            text_prompts(shape, prompt_tokens, conc, seed),
            generation_config=gen,
            continuous_batching_config=cb,
            persistent_manager=True,
            max_new_tokens=tokens,
        )
        info["warm_call_seconds"] = round(time.perf_counter() - started, 2)
        info["cb_config_resolved"] = _resolved(model)
        reset_peak()
        started = time.perf_counter()
        outputs = model.generate_batch(
            text_prompts(shape, prompt_tokens, conc, seed + conc),
            generation_config=gen,
            continuous_batching_config=cb,
            persistent_manager=True,
            record_timestamps=True,
            max_new_tokens=tokens,
        )
        info["timed_call_seconds"] = round(time.perf_counter() - started, 2)
    finally:
        hook.remove()
        model.destroy_cached_continuous_batching_manager()
    info["attn"] = attns[-1] if attns else None
    timings = [
        RequestTiming(
            submitted=float(out.created_time),
            events=[(float(ts), 1) for ts in (out.timestamps or [])],
            prompt_tokens=len(out.prompt_ids),
            completion_tokens=len(out.generated_tokens),
            finish_reason=str(out.status),
            error=out.error,
        )
        for out in outputs.values()
    ]
    missing = conc - len(timings)
    timings += [RequestTiming(submitted=0.0, error="no result from generate_batch")] * max(missing, 0)
    return timings, info


def peer_row(
    ctx: RunContext,
    shape: shapes.ModelShape,
    driver: str,
    conc: int,
    timings: list[RequestTiming],
    weights: roofline.ParamBytes,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """A row for a peer cell (driver ``peer`` or ``peer_http``), rate projected to the full output."""
    wl = ctx.cfg.workload
    metrics = summarize(timings, fields["peer_tokens"])
    projection = project_rate(timings, wl.output_tokens)
    measured = metrics.output_tokens_per_s
    metrics = dataclasses.replace(metrics, output_tokens_per_s=projection["projected"])
    context = roofline.mean_decode_context(wl.prompt_tokens, wl.output_tokens)
    extra = {
        "scenario": "standard",
        "workload": {
            "prompt_tokens": wl.prompt_tokens,
            "output_tokens": wl.output_tokens,
            "image_size": wl.image_size,
        },
        "prompt_tokens": max((t.prompt_tokens for t in timings), default=0),
        "output_tokens_per_request": round(metrics.output_tokens / max(metrics.requests, 1), 1),
        "output_tokens_per_s_measured": measured,
        "decode_concurrency": projection["decode_concurrency"],
        "complete": metrics.completed == metrics.requests,
        "bandwidth": ctx.bandwidth,
        "peer_note": f"{fields['peer_tokens']} tok/req measured, out tok/s projected to {wl.output_tokens}"
        if fields["peer_tokens"] < wl.output_tokens
        else None,
        **fields,
    }
    return make_row(
        model=shape.name,
        backend=str(fields.get("attn") or "default"),
        driver=driver,
        concurrency=conc,
        metrics=metrics,
        peak_gpu_mem_gb=peak_gb(),
        baseline_output_tokens_per_s=None,
        versions=ctx.versions,
        command=ctx.cfg.command,
        **{**extra, **ctx.rooflines(weights, shape, conc, context)},
    )


def run_peer(ctx: RunContext, shape: shapes.ModelShape) -> None:
    """The peer's cells for one model: generate_batch at each concurrency, then transformers serve."""
    cfg = ctx.cfg
    tag = f"[{shape.name}/peer]"
    started = time.perf_counter()
    free()
    try:
        model = build_model(shape, cfg.device, "float32" if cfg.dtype == "float32" else "bfloat16", cfg.seed)
    except Exception as exc:
        ctx.add(error_row(ctx, shape.name, "default", "peer", 1, {"scenario": "standard"}, exc))
        return
    cfg.log(f"{tag} transformers model built in {time.perf_counter() - started:.1f} s")
    weights = roofline.model_param_bytes(model)
    try:
        if "generate_batch" in cfg.peer:
            tokens = min(cfg.peer_tokens, cfg.workload.output_tokens)
            last_s = 0.0  # a generate_batch call has no time limit: a cell starts only if twice the last fits
            for conc in cfg.peer_concurrency or cfg.standard_concurrency() or [1]:
                if ctx.clock.remaining() < max(30.0, 2 * last_s):
                    cfg.log(f"{tag} generate_batch c={conc}: skipped, out of time")
                    continue
                began = time.perf_counter()
                base = {
                    "peer": "generate_batch",
                    "peer_tokens": tokens,
                    "peer_cb_config": cfg.peer_cb_config or "defaults",
                }
                try:
                    timings, info = generate_batch_cell(
                        model,
                        shape,
                        cfg.workload.prompt_tokens,
                        conc,
                        tokens,
                        ctx.seeds(2 * conc),
                        _cb_config(cfg.peer_cb_config),
                    )
                except Exception as exc:
                    cfg.log(f"{tag} generate_batch c={conc} failed: {type(exc).__name__}: {exc}")
                    ctx.add(
                        error_row(
                            ctx, shape.name, "default", "peer", conc, {"scenario": "standard", **base}, exc
                        )
                    )
                    continue
                last_s = time.perf_counter() - began
                fields = {**base, **info, "decode_path": f"generate_batch ({info.get('attn')})"}
                log_row(cfg.log, tag, ctx.add(peer_row(ctx, shape, "peer", conc, timings, weights, fields)))
        if "serve" in cfg.peer:
            from bench.vlmbench.peer_serve import run_serve

            run_serve(ctx, shape, model, weights)
    finally:
        del model
        free()
