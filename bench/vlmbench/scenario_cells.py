"""The extra workloads' cells (vision-heavy, shared prefix, arrival burst, JSON schema) over HTTP, on one
loaded engine of their own, sized for them (``engine_size``).

Each cell: an untimed warm-up wave (4 output tokens, its own images) at the number of requests the cell
keeps in flight, then the measured cell through the client process. Rows have ``driver: http``,
``scenario`` (the workload's name), ``workload`` (its sizes) and the workload's own measures:
``ttft_by_group`` (prefix: ``stats.prefix_ttft``), ``burst`` (ITL of the running streams
before vs during the arrivals), ``json_valid`` (answers that parse and fit the schema's top level). A
request the server refuses is recorded, not raised: the row's ``first_error`` is ``HTTP 400: ...``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.vlmbench import roofline, shapes
from bench.vlmbench.context import RunConfig, RunContext, peak_gb, reset_peak
from bench.vlmbench.results import make_row
from bench.vlmbench.scenarios import (
    Scenario,
    companion_of,
    engine_chat,
    image_seeds,
    seeds_used,
    slots_needed,
)
from bench.vlmbench.standard import error_row, fit_prompt, log_row
from bench.vlmbench.stats import burst_metrics, prefix_ttft, summarize
from bench.vlmbench.workload import noise_image


def estimate_prompt_tokens(processor: Any, scenario: Scenario) -> int:
    """Prompt tokens of the scenario's first request, counted by the checkpoint's processor (the
    engine's own count can only be lower, when the server downscales large images)."""
    if scenario.prompt_tokens is not None:
        return scenario.prompt_tokens
    images = [noise_image(scenario.image_size, s) for s in image_seeds(scenario, 0, 0)]
    text = processor.apply_chat_template(
        engine_chat(scenario, images, 0), add_generation_prompt=True, tokenize=False
    )
    batch = processor(text=[text], images=images or None, return_tensors="pt")
    return int(batch["input_ids"].shape[1])


def engine_size(cfg: RunConfig, shape: shapes.ModelShape, cells: list[tuple[str, int]]) -> tuple[int, int]:
    """``(max_batch_size, max_model_length)`` that hold every cell (overrides in ``cfg`` win)."""
    processor = shapes.build_processor(shape, shapes.build_tokenizer(shape.vocab_size))
    slots, length = 1, 64
    for name, conc in cells:
        scenario = cfg.scenario(name)
        slots = max(slots, slots_needed(scenario, conc))
        out = max(scenario.output_tokens, scenario.burst_output_tokens if scenario.burst_requests else 0)
        length = max(length, estimate_prompt_tokens(processor, scenario) + out + 64)
    return cfg.max_batch_size or slots, cfg.max_model_length or length


def workload_fields(scenario: Scenario, prompt_tokens: int) -> dict[str, Any]:
    """What a row says about its workload."""
    return {
        "scenario": scenario.name,
        "workload": {
            "prompt_tokens": prompt_tokens,
            "output_tokens": scenario.output_tokens,
            "image_size": scenario.image_size,
            "images_per_request": scenario.images_per_request,
            "image_format": scenario.image_format,
            "text_chars": scenario.text_chars,
            "system_chars": scenario.system_chars,
            "distinct_images": scenario.distinct_images,
            "schedule": scenario.schedule,
            "requests": scenario.requests,
            "burst_requests": scenario.burst_requests,
            "burst_after_tokens": scenario.burst_after_tokens,
            "burst_output_tokens": scenario.burst_output_tokens,
            "response_format": scenario.response_format,
            "temperature": scenario.temperature,
        },
    }


def run_cells(
    ctx: RunContext,
    shape: shapes.ModelShape,
    ckpt: Any,
    backend: str,
    engine: Any,
    model: Any,
    common: dict[str, Any],
    cells: list[tuple[str, int]],
) -> None:
    """Run the workload cells of one loaded engine, adding a row per cell (and per companion)."""
    from bench.vlmbench.engines import server_for

    cfg = ctx.cfg
    tag = f"[{shape.name}/{backend}]"
    weights = roofline.model_param_bytes(model)
    server = server_for(engine, ckpt, shape, backend, cfg.dtype)
    try:
        health = server.health()
        for name, conc in cells:
            scenario = cfg.scenario(name)
            if scenario.prompt_tokens is not None:  # fit the filler: exactly that many prompt tokens
                try:
                    chars = fit_prompt(
                        engine, scenario.image_size, scenario.prompt_tokens, scenario.instruction
                    )
                except ValueError as exc:
                    ctx.add(
                        error_row(ctx, shape.name, backend, "http", conc, {**common, "scenario": name}, exc)
                    )
                    continue
                scenario = scenario.with_(text_chars=chars)
            companion = companion_of(scenario)
            for variant in [companion, scenario] if companion is not None else [scenario]:
                remaining = ctx.clock.remaining()
                if remaining < 20:
                    cfg.log(f"{tag} {variant.name} c={conc}: skipped, out of time")
                    continue
                try:
                    row = _cell(
                        ctx, shape, server, engine, variant, conc, min(cfg.cell_time_limit_s, remaining - 10)
                    )
                except Exception as exc:
                    cfg.log(f"{tag} {variant.name} c={conc} failed: {type(exc).__name__}: {exc}")
                    ctx.add(
                        error_row(
                            ctx, shape.name, backend, "http", conc, {**common, "scenario": variant.name}, exc
                        )
                    )
                    continue
                prompt = int(row["prompt_tokens"] or 0)
                roofs = ctx.rooflines(
                    weights, shape, conc, roofline.mean_decode_context(prompt, variant.output_tokens)
                )
                metrics = row.pop("metrics")
                fields = {**common, **workload_fields(variant, prompt), **row, "health": health}
                made = make_row(
                    model=shape.name,
                    backend=backend,
                    driver="http",
                    concurrency=conc,
                    metrics=metrics,
                    peak_gpu_mem_gb=peak_gb(),
                    baseline_output_tokens_per_s=None,
                    versions=ctx.versions,
                    command=cfg.command,
                    **{**fields, **roofs},
                )
                log_row(cfg.log, tag, ctx.add(made))
    finally:
        server.stop()


def _cell(
    ctx: RunContext,
    shape: shapes.ModelShape,
    server: Any,
    engine: Any,
    scenario: Scenario,
    conc: int,
    limit: float,
) -> dict[str, Any]:
    from bench.vlmbench import drivers
    from bench.vlmbench.http_driver import http_cell

    in_flight = slots_needed(scenario, conc)
    # the warm-up shares nothing with the cell (no instruction, its own images): no prefix cache warms
    warm = scenario.with_(
        schedule="wave", burst_requests=0, distinct_images=None, system_chars=0, question=False
    )
    http_cell(
        server.url,
        model=shape.name,
        scenario=warm,
        concurrency=in_flight,
        time_limit_s=120.0,
        seed=ctx.seeds(seeds_used(warm, in_flight)),
        max_tokens=4,
    )
    drivers.wait_idle(engine)
    reset_peak()
    timings, meta = http_cell(
        server.url,
        model=shape.name,
        scenario=scenario,
        concurrency=conc,
        time_limit_s=limit,
        seed=ctx.seeds(seeds_used(scenario, conc)),
        keep_text=scenario.response_format is not None,
    )
    drivers.wait_idle(engine)
    metrics = summarize(timings, scenario.output_tokens)
    out: dict[str, Any] = {
        "metrics": metrics,
        "prompt_tokens": max((t.prompt_tokens for t in timings), default=0),
        "output_tokens_per_request": round(metrics.output_tokens / max(metrics.requests, 1), 1),
        "complete": metrics.completed == metrics.requests,
        "time_limit_s": round(limit, 1),
        "client": meta,
        "finish_reasons": dict(Counter(str(t.finish_reason) for t in timings)),
    }
    if scenario.schedule == "burst":
        burst = burst_metrics(timings, meta.get("burst_at"))
        out["burst"] = burst
        out["complete"] = metrics.errors == 0 and burst["burst_first_tokens"] == scenario.burst_requests
    if scenario.distinct_images:
        out["ttft_by_group"] = prefix_ttft(timings)
    if scenario.response_format is not None:
        from bench.vlmbench.scenarios import json_conforms

        answered = [t for t in timings if not t.error]
        out["json_valid"] = sum(1 for t in answered if json_conforms(t.text))
        out["json_answered"] = len(answered)
        out["refused"] = bool(timings) and all((t.error or "").startswith("HTTP 4") for t in timings)
    return out
