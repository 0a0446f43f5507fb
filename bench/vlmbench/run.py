"""The benchmark matrix: models x backends x (generate() baseline, drivers x concurrency), under a time budget.

For each model shape and attention backend: write the weightless checkpoint once, ``Engine.load`` it
with random weights built on the device (the server's own loading path: aliases, processor, attention
choice with flash -> sdpa fallback, warm-up), fit the prompt to exactly ``prompt_tokens`` tokens with
the engine's own ``prepare``, then run the cells in ``plan_cells`` order. Rows are written after
every cell, so a run cut short still leaves its figures.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.vlmbench import drivers, roofline, shapes
from bench.vlmbench.results import make_row, results_path, versions, write_rows
from bench.vlmbench.stats import CellMetrics, RequestTiming, summarize
from bench.vlmbench.workload import Workload, engine_messages, filler_text, fit_text_chars, noise_image

BACKENDS: tuple[str, ...] = ("sdpa", "flash_attention_2", "eager")


@dataclass
class RunConfig:
    """What to run. Times are seconds."""

    models: list[str]
    out_dir: Path
    workdir: Path
    backends: list[str] = field(default_factory=lambda: ["sdpa", "flash_attention_2"])
    drivers: list[str] = field(default_factory=lambda: ["engine", "http"])
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    workload: Workload = field(default_factory=Workload)
    baseline: bool = True
    baseline_batch: int = 4
    baseline_tokens: int | None = None  # default: workload.output_tokens
    cell_time_limit_s: float = 120.0
    deadline_s: float | None = None  # no new cell starts later than this after the run began
    device: str = "auto"
    dtype: str = "bfloat16"
    bandwidth: float = roofline.H100_BANDWIDTH_BYTES_PER_S
    seed: int = 0
    command: str = ""
    max_batch_size: int | None = None  # default: the largest concurrency
    results_file: Path | None = None  # default: <out_dir>/<device>-<date>.json
    cells: list[tuple[str, int]] | None = None  # explicit (driver, concurrency) list instead of the plan
    profile_batches: list[int] = field(default_factory=list)  # decode-step profiles after the cells
    compile: bool = False  # EngineConfig.compile: torch.compile the static decode step
    fast_decode: bool = True  # EngineConfig.fast_decode: packed GQA decode attention, fused MoE experts
    log: Callable[[str], None] = print


def engine_batch_size(cfg: RunConfig) -> int:
    """The engine's max_batch_size: as given, else the largest concurrency the run asks for (the
    explicit cells when there are some, not the default concurrency list)."""
    if cfg.max_batch_size:
        return cfg.max_batch_size
    if cfg.cells:
        return max(c for _, c in cfg.cells)
    return max(cfg.concurrency)


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


class _Clock:
    def __init__(self, deadline_s: float | None) -> None:
        self.started = time.monotonic()
        self.deadline_s = deadline_s

    def remaining(self) -> float:
        if self.deadline_s is None:
            return float("inf")
        return self.deadline_s - (time.monotonic() - self.started)


def _cuda() -> Any:
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def _reset_peak() -> None:
    cuda = _cuda()
    if cuda is not None:
        cuda.synchronize()
        cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    cuda = _cuda()
    if cuda is None:
        return None
    cuda.synchronize()
    return float(cuda.max_memory_allocated()) / 1e9


def _free() -> None:
    gc.collect()
    cuda = _cuda()
    if cuda is not None:
        cuda.empty_cache()


def run(cfg: RunConfig) -> list[dict[str, Any]]:
    """Run the matrix; returns the rows (also written to the results file after every cell)."""
    clock = _Clock(cfg.deadline_s)
    vers = versions()
    date = time.strftime("%Y-%m-%d", time.gmtime())
    path = cfg.results_file or results_path(cfg.out_dir, str(vers.get("device", "cpu")), date)
    rows: list[dict[str, Any]] = []
    for name in cfg.models:
        shape = shapes.get_shape(name)
        started = time.perf_counter()
        ckpt = shapes.write_checkpoint(shape, cfg.workdir / shape.name)
        cfg.log(f"[{shape.name}] weightless checkpoint in {time.perf_counter() - started:.1f} s: {ckpt}")
        for backend in cfg.backends:
            if backend not in BACKENDS:
                raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
            if clock.remaining() < 30:
                cfg.log(f"[{shape.name}/{backend}] skipped: out of time")
                continue
            _run_backend(cfg, shape, ckpt, backend, vers, clock, rows, path)
            _free()
    cfg.log(f"wrote {len(rows)} rows to {path}")
    return rows


def _run_backend(
    cfg: RunConfig,
    shape: shapes.ModelShape,
    ckpt: Path,
    backend: str,
    vers: dict[str, Any],
    clock: _Clock,
    rows: list[dict[str, Any]],
    path: Path,
) -> None:
    from omega_server import models
    from omega_server.engine import Engine, EngineConfig

    wl = cfg.workload
    mbs = engine_batch_size(cfg)
    tag = f"[{shape.name}/{backend}]"
    _free()
    _reset_peak()
    started = time.perf_counter()
    with shapes.random_weights(cfg.seed) as built:
        engine = Engine.load(
            EngineConfig(
                model_path=str(ckpt),
                attn_impl=backend,
                dtype=cfg.dtype,
                max_batch_size=mbs,
                max_model_length=wl.prompt_tokens + wl.output_tokens + 64,
                max_queue=max(256, 2 * mbs),
                device=cfg.device,
                served_model_name=shape.name,
                fast_decode=cfg.fast_decode,
                **({"compile": True} if cfg.compile else {}),
            )
        )
    load_s = time.perf_counter() - started
    info = engine.info
    model = built.last
    common: dict[str, Any] = {
        "attn_requested": backend,
        "flash_attn": getattr(info, "flash_attn", None),
        "load_seconds": round(load_s, 2),
        "weights_build_seconds": round(built.seconds[-1], 3),
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "fast_decode": cfg.fast_decode,
        "gqa_decode": getattr(info, "gqa_decode", None),
        "workload": {
            "prompt_tokens": wl.prompt_tokens,
            "output_tokens": wl.output_tokens,
            "image_size": wl.image_size,
            "temperature": wl.temperature,
        },
        "max_batch_size": mbs,
        "kv_cache": getattr(info, "kv_cache", None),
        "cuda_graphs": getattr(info, "cuda_graphs", None),
        "compiled": getattr(info, "compiled", None),
        "compile_seconds": getattr(info, "compile_seconds", None),
        "max_prefill_tokens": getattr(engine.config, "max_prefill_tokens", None),
    }
    cfg.log(
        f"{tag} engine ready in {load_s:.1f} s: attn={info.attn} params={common['params_b']}B "
        f"kv_cache={common['kv_cache']} cuda_graphs={common['cuda_graphs']} "
        f"compiled={common['compiled']} compile_seconds={common['compile_seconds']}"
    )
    try:
        if backend != info.attn:
            rows.append(
                make_row(
                    model=shape.name,
                    backend=backend,
                    driver="engine",
                    concurrency=min(cfg.concurrency),
                    metrics=None,
                    peak_gpu_mem_gb=None,
                    baseline_output_tokens_per_s=None,
                    roofline_output_tokens_per_s=None,
                    versions=vers,
                    command=cfg.command,
                    attn=str(info.attn),
                    error=f"{backend} was asked for but the engine runs {info.attn}: {info.flash_attn}",
                    **common,
                )
            )
            write_rows(path, rows)
            cfg.log(f"{tag} fell back to {info.attn}; cells skipped")
            return
        if cfg.compile and not common["compiled"]:  # the compile failed and the engine fell back
            cfg.log(f"{tag} --compile asked for but the decode step is not compiled; cells skipped")
            return
        _cells(cfg, shape, ckpt, backend, engine, model, vers, clock, rows, path, common, models)
    finally:
        engine.shutdown()
        built.clear()
        del model, engine
        _free()


def _cells(
    cfg: RunConfig,
    shape: shapes.ModelShape,
    ckpt: Path,
    backend: str,
    engine: Any,
    model: Any,
    vers: dict[str, Any],
    clock: _Clock,
    rows: list[dict[str, Any]],
    path: Path,
    common: dict[str, Any],
    models: Any,
) -> None:
    from bench.vlmbench.http_driver import InProcessServer

    wl = cfg.workload
    tag = f"[{shape.name}/{backend}]"

    def count(chars: int) -> int:
        req = drivers.generation_request(
            engine_messages(noise_image(wl.image_size, 0), filler_text(chars)), 1
        )
        return int(engine.prepare(req).prompt_tokens)

    chars = fit_text_chars(count, wl.prompt_tokens)
    text = filler_text(chars)
    weights = roofline.model_param_bytes(model)
    kv = roofline.kv_bytes_per_token(shape.num_layers, shape.kv_heads, shape.head_dim)
    context = roofline.mean_decode_context(wl.prompt_tokens, wl.output_tokens)

    def roof(batch: int) -> float:
        return roofline.roofline_tokens_per_s(
            weights,
            batch=batch,
            context_tokens=context,
            kv_per_token=kv,
            hidden_size=shape.hidden_size,
            num_experts=int(shape.text.get("num_experts", 0)),
            top_k=int(shape.text.get("num_experts_per_tok", 0)),
            bandwidth=cfg.bandwidth,
        )

    common = {
        **common,
        "weights_gb": {k: round(v / 1e9, 3) for k, v in vars(weights).items()},
        "kv_bytes_per_token": kv,
        "roofline_context_tokens": context,
    }
    baseline_tps: float | None = None
    server: InProcessServer | None = None
    warmed: set[str] = set()
    try:
        cells = (
            cfg.cells
            if cfg.cells is not None
            else plan_cells(cfg.drivers, cfg.concurrency, cfg.baseline, cfg.baseline_batch)
        )
        for driver, conc in cells:
            remaining = clock.remaining()
            if remaining < 20:
                cfg.log(f"{tag} {driver} c={conc}: skipped, out of time")
                continue
            limit = min(cfg.cell_time_limit_s, remaining - 10)
            extra: dict[str, Any] = {}
            if driver == "generate":
                chats = [engine_messages(noise_image(wl.image_size, i), text) for i in range(conc)]
                processor = models.load_processor(ckpt, shape.family)
                _reset_peak()
                tokens = cfg.baseline_tokens or wl.output_tokens
                try:
                    res = drivers.generate_baseline(model, processor, chats, tokens)
                except Exception as exc:
                    cfg.log(f"{tag} generate() b{conc} failed: {type(exc).__name__}: {exc}")
                    rows.append(_error_row(cfg, shape, backend, driver, conc, vers, common, exc))
                    write_rows(path, rows)
                    continue
                baseline_tps = res["output_tokens_per_s"]
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
                extra = {
                    "prompt_tokens": res["prompt_tokens"],
                    "output_tokens_per_request": tokens,
                    "complete": True,
                }
            else:
                if driver == "http" and server is None:
                    server = InProcessServer(
                        engine,
                        model_path=str(ckpt),
                        served_model_name=shape.name,
                        attn_impl=backend,
                        max_batch_size=engine.config.max_batch_size,
                        max_model_length=engine.config.max_model_length,
                        max_queue=engine.config.max_queue,
                        dtype=cfg.dtype if cfg.dtype != "bf16" else "bfloat16",
                    ).start()
                    extra["health_attn"] = server.health().get("attn")
                # untimed warm-ups: the first request through each path, and a short wave at each new
                # concurrency (the engine captures CUDA graphs per batch size on first use)
                if driver not in warmed:
                    _drive(driver, engine, server, shape, text, wl, 1, 4, 120.0)
                    warmed.add(driver)
                if f"c{conc}" not in warmed:
                    _drive("engine", engine, server, shape, text, wl, conc, 8, 120.0)
                    warmed.add(f"c{conc}")
                _reset_peak()
                timings = _drive(driver, engine, server, shape, text, wl, conc, wl.output_tokens, limit)
                metrics = summarize(timings, wl.output_tokens)
                extra.update(
                    prompt_tokens=max((t.prompt_tokens for t in timings), default=0),
                    output_tokens_per_request=round(metrics.output_tokens / max(metrics.requests, 1), 1),
                    complete=metrics.completed == metrics.requests,
                    time_limit_s=round(limit, 1),
                )
            row = make_row(
                model=shape.name,
                backend=backend,
                driver=driver,
                concurrency=conc,
                metrics=metrics,
                peak_gpu_mem_gb=_peak_gb(),
                baseline_output_tokens_per_s=baseline_tps,
                roofline_output_tokens_per_s=roof(conc),
                versions=vers,
                command=cfg.command,
                **extra,
                **common,
            )
            rows.append(row)
            write_rows(path, rows)
            cfg.log(
                f"{tag} {driver} c={conc}: {row['output_tokens_per_s']} tok/s, ttft p50 {row['ttft_p50_ms']} ms, "
                f"itl p50 {row['itl_p50_ms']} ms, {row['output_tokens_per_request']} tok/req, "
                f"roofline {row['roofline_output_tokens_per_s']}, peak {row['peak_gpu_mem_gb']} GB"
                + ("" if row.get("complete", True) else " (INCOMPLETE: time limit)")
                + (f" first error: {row['first_error']}" if row.get("first_error") else "")
            )
    finally:
        if server is not None:
            server.stop()
    for batch in cfg.profile_batches:
        if clock.remaining() < 30:
            cfg.log(f"{tag} profile b{batch}: skipped, out of time")
            continue
        _profile(cfg, shape, backend, engine, model, text, batch, path)


def _profile(
    cfg: RunConfig,
    shape: shapes.ModelShape,
    backend: str,
    engine: Any,
    model: Any,
    text: str,
    batch: int,
    path: Path,
) -> None:
    import json

    from bench.vlmbench.profile import profile_decode

    wl = cfg.workload
    req = drivers.generation_request(engine_messages(noise_image(wl.image_size, 0), text), 1)
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


def _drive(
    driver: str,
    engine: Any,
    server: Any,
    shape: shapes.ModelShape,
    text: str,
    wl: Workload,
    conc: int,
    max_tokens: int,
    limit: float,
) -> list[RequestTiming]:
    if driver == "engine":
        requests = [
            drivers.generation_request(engine_messages(noise_image(wl.image_size, i), text), max_tokens)
            for i in range(conc)
        ]
        return drivers.engine_cell(engine, requests, limit)
    from bench.vlmbench.http_driver import http_cell

    wl_cell = Workload(wl.prompt_tokens, max_tokens, wl.image_size, wl.temperature)
    timings = http_cell(
        server.url,
        model=shape.name,
        concurrency=conc,
        text_chars=len(text),
        workload=wl_cell,
        time_limit_s=limit,
    )
    drivers.wait_idle(engine)
    return timings


def _error_row(
    cfg: RunConfig,
    shape: shapes.ModelShape,
    backend: str,
    driver: str,
    conc: int,
    vers: dict[str, Any],
    common: dict[str, Any],
    exc: BaseException,
) -> dict[str, Any]:
    return make_row(
        model=shape.name,
        backend=backend,
        driver=driver,
        concurrency=conc,
        metrics=None,
        peak_gpu_mem_gb=_peak_gb(),
        baseline_output_tokens_per_s=None,
        roofline_output_tokens_per_s=None,
        versions=vers,
        command=cfg.command,
        error=f"{type(exc).__name__}: {exc}"[:1000],
        **common,
    )
