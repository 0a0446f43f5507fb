"""The standard cells of one (model, backend): issue 7's workload through the engine alone, over HTTP,
and plain ``generate()`` b4, in ``plan_cells`` order, then the decode-step profiles.

The prompt is fitted to exactly ``prompt_tokens`` with the engine's own ``prepare``. Before each
measured cell an untimed warm-up runs (the first request through a path; a short wave at each new
concurrency, for the engine's per-batch-size CUDA graphs). Every request, warm-ups included, has an
image of its own (``RunContext.seeds``), so no cache in the server can serve one cell from another.
"""

from __future__ import annotations

from typing import Any

from bench.vlmbench import drivers, roofline, shapes
from bench.vlmbench.context import RunContext, peak_gb, reset_peak
from bench.vlmbench.results import make_row
from bench.vlmbench.scenarios import Scenario
from bench.vlmbench.stats import CellMetrics, RequestTiming, summarize
from bench.vlmbench.workload import Workload, engine_messages, filler_text, fit_text_chars, noise_image


def plan_cells(
    drivers_: list[str], concurrency: list[int], baseline: bool, baseline_batch: int
) -> list[tuple[str, int]]:
    """The cells of one (model, backend), in run order: the baseline, then by concurrency, then driver.

    Low concurrency first: the figures that matter most (and cost least) come before the big ones.
    """
    for d in drivers_:
        if d not in ("engine", "http"):
            raise ValueError(f"driver must be engine or http, got {d!r}")
    cells: list[tuple[str, int]] = [("generate", baseline_batch)] if baseline else []
    for c in sorted(set(concurrency)):
        if c < 1:
            raise ValueError(f"concurrency must be >= 1, got {c}")
        cells.extend((d, c) for d in drivers_)
    return cells


def standard_scenario(wl: Workload, text_chars: int) -> Scenario:
    """Issue 7's workload as a scenario: one PNG image of ``image_size`` and the fitted text."""
    return Scenario(
        "standard",
        image_size=wl.image_size,
        text_chars=text_chars,
        prompt_tokens=wl.prompt_tokens,
        output_tokens=wl.output_tokens,
        temperature=wl.temperature,
    )


def fit_prompt(engine: Any, image_size: int, prompt_tokens: int, prefix: str = "") -> int:
    """Filler characters after ``prefix`` that make the prompt (one image) exactly ``prompt_tokens``."""

    def count(chars: int) -> int:
        messages = engine_messages(noise_image(image_size, 0), prefix + filler_text(chars))
        return int(engine.prepare(drivers.generation_request(messages, 1)).prompt_tokens)

    return fit_text_chars(count, prompt_tokens)


def run_cells(
    ctx: RunContext,
    shape: shapes.ModelShape,
    ckpt: Any,
    backend: str,
    engine: Any,
    model: Any,
    common: dict[str, Any],
) -> None:
    """Run the standard cells of one loaded engine, adding a row per cell."""
    from bench.vlmbench.engines import server_for
    from bench.vlmbench.http_driver import InProcessServer

    cfg = ctx.cfg
    wl = cfg.workload
    tag = f"[{shape.name}/{backend}]"
    text = filler_text(fit_prompt(engine, wl.image_size, wl.prompt_tokens))
    scenario = standard_scenario(wl, len(text))
    weights = roofline.model_param_bytes(model)
    context = roofline.mean_decode_context(wl.prompt_tokens, wl.output_tokens)
    common = {
        **common,
        "scenario": "standard",
        "weights_gb": {k: round(v / 1e9, 3) for k, v in vars(weights).items()},
        "kv_bytes_per_token": roofline.kv_bytes_per_token(shape.num_layers, shape.kv_heads, shape.head_dim),
        "roofline_context_tokens": context,
    }
    baseline_tps: float | None = None
    server: InProcessServer | None = None
    warmed: set[str] = set()
    cells = (
        cfg.cells
        if cfg.cells is not None
        else plan_cells(cfg.drivers, cfg.concurrency, cfg.baseline, cfg.baseline_batch)
    )
    try:
        for driver, conc in cells:
            remaining = ctx.clock.remaining()
            if remaining < 20:
                cfg.log(f"{tag} {driver} c={conc}: skipped, out of time")
                continue
            limit = min(cfg.cell_time_limit_s, remaining - 10)
            extra: dict[str, Any] = {}
            if driver == "generate":
                try:
                    metrics, extra, baseline_tps = _generate_cell(ctx, shape, ckpt, model, text, conc)
                except Exception as exc:
                    cfg.log(f"{tag} generate() b{conc} failed: {type(exc).__name__}: {exc}")
                    ctx.add(error_row(ctx, shape.name, backend, driver, conc, common, exc))
                    continue
            else:
                if driver == "http" and server is None:
                    server = server_for(engine, ckpt, shape, backend, cfg.dtype)
                    common = {**common, "health": server.health()}  # slots, capacity, attention: as served
                    extra["health_attn"] = common["health"].get("attn")
                if driver not in warmed:  # untimed: the first request through each path
                    _drive(ctx, driver, engine, server, shape, scenario, 1, 4, 120.0)
                    warmed.add(driver)
                if f"c{conc}" not in warmed:  # untimed: graphs for this batch size
                    _drive(ctx, "engine", engine, server, shape, scenario, conc, 8, 120.0)
                    warmed.add(f"c{conc}")
                reset_peak()
                timings = _drive(ctx, driver, engine, server, shape, scenario, conc, wl.output_tokens, limit)
                metrics = summarize(timings, wl.output_tokens)
                extra.update(
                    prompt_tokens=max((t.prompt_tokens for t in timings), default=0),
                    output_tokens_per_request=round(metrics.output_tokens / max(metrics.requests, 1), 1),
                    complete=metrics.completed == metrics.requests,
                    time_limit_s=round(limit, 1),
                )
            row = ctx.add(
                make_row(
                    model=shape.name,
                    backend=backend,
                    driver=driver,
                    concurrency=conc,
                    metrics=metrics,
                    peak_gpu_mem_gb=peak_gb(),
                    baseline_output_tokens_per_s=baseline_tps,
                    versions=ctx.versions,
                    command=cfg.command,
                    **ctx.rooflines(weights, shape, conc, context),
                    **extra,
                    **common,
                )
            )
            log_row(cfg.log, tag, row)
    finally:
        if server is not None:
            server.stop()
    for batch in cfg.profile_batches:
        if ctx.clock.remaining() < 30:
            cfg.log(f"{tag} profile b{batch}: skipped, out of time")
            continue
        _profile(ctx, shape, backend, engine, model, text, batch)


def log_row(log: Any, tag: str, row: dict[str, Any]) -> None:
    """One line per cell in the run's log."""
    log(
        f"{tag} {row['driver']} c={row['concurrency']} {row.get('scenario', '')}: "
        f"{row['output_tokens_per_s']} tok/s, ttft p50 {row['ttft_p50_ms']} ms, "
        f"itl p50 {row['itl_p50_ms']} ms, {row.get('output_tokens_per_request')} tok/req, "
        f"roofline {row['roofline_output_tokens_per_s']}, peak {row['peak_gpu_mem_gb']} GB"
        + ("" if row.get("complete", True) else " (INCOMPLETE)")
        + (f" first error: {row['first_error']}" if row.get("first_error") else "")
    )


def _generate_cell(
    ctx: RunContext, shape: shapes.ModelShape, ckpt: Any, model: Any, text: str, conc: int
) -> tuple[CellMetrics, dict[str, Any], float]:
    wl = ctx.cfg.workload
    seed = ctx.seeds(conc)
    chats = [engine_messages(noise_image(wl.image_size, seed + i), text) for i in range(conc)]
    processor = shapes.build_processor(shape, shapes.build_tokenizer(shape.vocab_size))  # the checkpoint's
    reset_peak()
    tokens = ctx.cfg.baseline_tokens or wl.output_tokens
    res = drivers.generate_baseline(model, processor, chats, tokens)
    metrics = CellMetrics(
        requests=conc,
        completed=conc,
        errors=0,
        output_tokens=res["output_tokens"],
        seconds=res["seconds"],
        output_tokens_per_s=res["output_tokens_per_s"],
        per_request_output_tokens_per_s=round(res["output_tokens_per_s"] / conc, 1),
        decode_tokens_per_s_p50=None,
        ttft_p50_ms=None,
        ttft_p95_ms=None,
        itl_p50_ms=None,
        itl_p95_ms=None,
        itl_mean_ms=None,
    )
    extra = {"prompt_tokens": res["prompt_tokens"], "output_tokens_per_request": tokens, "complete": True}
    return metrics, extra, float(res["output_tokens_per_s"])


def _drive(
    ctx: RunContext,
    driver: str,
    engine: Any,
    server: Any,
    shape: shapes.ModelShape,
    scenario: Scenario,
    conc: int,
    max_tokens: int,
    limit: float,
) -> list[RequestTiming]:
    seed = ctx.seeds(conc)
    text = filler_text(scenario.text_chars)
    if driver == "engine":
        requests = [
            drivers.generation_request(
                engine_messages(noise_image(scenario.image_size, seed + i), text), max_tokens
            )
            for i in range(conc)
        ]
        return drivers.engine_cell(engine, requests, limit)
    from bench.vlmbench.http_driver import http_cell

    timings, _ = http_cell(
        server.url,
        model=shape.name,
        scenario=scenario,
        concurrency=conc,
        time_limit_s=limit,
        seed=seed,
        max_tokens=max_tokens,
    )
    drivers.wait_idle(engine)
    return timings


def _profile(
    ctx: RunContext, shape: shapes.ModelShape, backend: str, engine: Any, model: Any, text: str, batch: int
) -> None:
    import json

    from bench.vlmbench.profile import profile_decode

    cfg = ctx.cfg
    req = drivers.generation_request(engine_messages(noise_image(cfg.workload.image_size, 0), text), 1)
    try:
        result = profile_decode(model, engine.prepare(req).inputs, batch=batch)
    except Exception as exc:
        cfg.log(f"[{shape.name}/{backend}] profile b{batch} failed: {type(exc).__name__}: {exc}")
        return
    result.update(model=shape.name, backend=backend)
    target = cfg.out_dir / "profiles.jsonl"  # one line per profile (few files come back from the GPU box)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a") as f:
        f.write(json.dumps(result) + "\n")
    cfg.log(
        f"[{shape.name}/{backend}] profile b{batch}: wall {result['wall_ms_per_step']} ms/step, "
        f"gpu {result['gpu_ms_per_step']} ms/step, {result['kernels_per_step']} kernels/step"
    )
    for op in result["top_kernels"][:5]:
        cfg.log(f"    kernel {op['gpu_ms_per_step']:>8} ms {op['calls_per_step']:>7}x  {op['op'][:90]}")
    for op in result["top_gpu_ops"][:8]:
        cfg.log(f"    gpu {op['gpu_ms_per_step']:>8} ms {op['calls_per_step']:>7}x  {op['op'][:90]}")
    for op in result["top_cpu_ops"][:6]:
        cfg.log(f"    cpu {op['cpu_ms_per_step']:>8} ms {op['calls_per_step']:>7}x  {op['op'][:90]}")


def error_row(
    ctx: RunContext,
    model: str,
    backend: str,
    driver: str,
    conc: int,
    common: dict[str, Any],
    exc: BaseException | str,
) -> dict[str, Any]:
    """A row that says the cell failed (or was skipped) and why."""
    return make_row(
        model=model,
        backend=backend,
        driver=driver,
        concurrency=conc,
        metrics=None,
        peak_gpu_mem_gb=peak_gb(),
        baseline_output_tokens_per_s=None,
        roofline_output_tokens_per_s=None,
        versions=ctx.versions,
        command=ctx.cfg.command,
        error=(exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}")[:1000],
        **common,
    )
