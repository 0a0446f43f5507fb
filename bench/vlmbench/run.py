"""The benchmark run: the GPU's bandwidth, then per model shape and attention backend the standard cells
(engine, HTTP, generate() b4) and the extra workloads, each on an engine of its own; then the peer.

For each model: write the weightless checkpoint once; for each backend ``Engine.load`` it with random
weights built on the device (``engines.loaded_engine``), sized by the largest concurrency of the
standard cells, run them (``standard``), and load it again sized for the workloads (``scenario_cells``);
then transformers' own continuous batching and ``transformers serve`` on the same shape (``peer``).
Rows are written after every cell, so a run cut short still leaves its figures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.vlmbench import bandwidth, scenario_cells, shapes, standard
from bench.vlmbench.context import PEERS, Clock, RunConfig, RunContext, free
from bench.vlmbench.engines import loaded_engine, refusal
from bench.vlmbench.results import results_path, versions
from bench.vlmbench.standard import error_row, plan_cells

BACKENDS: tuple[str, ...] = ("sdpa", "flash_attention_2", "eager")

__all__ = ["BACKENDS", "RunConfig", "engine_batch_size", "plan_cells", "run"]


def engine_batch_size(cfg: RunConfig) -> int:
    """The standard cells' engine max_batch_size: as given, else the largest concurrency the run asks for
    (the explicit cells when there are some, not the default concurrency list)."""
    if cfg.max_batch_size:
        return cfg.max_batch_size
    if cfg.cells:
        return max(c for _, c in cfg.cells)
    return max(cfg.concurrency)


def _device_name(device: str) -> tuple[str, str]:
    """``(name, torch device)`` of the device the run uses."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0), "cuda"
    return "cpu", "cpu"


def start(cfg: RunConfig) -> RunContext:
    """The run's context: versions, the bandwidth (datasheet + a copy measured now), the results file."""
    vers = versions()
    name, device = _device_name(cfg.device)
    size = cfg.copy_bytes if device == "cuda" else min(cfg.copy_bytes, 64 << 20)
    bw = bandwidth.measure(name, device, size, cfg.copy_reps)
    copy = bw.get("copy_bytes_per_s")
    cfg.log(
        f"[bandwidth] {name}: datasheet {bw['datasheet_bytes_per_s']} B/s ({bw['datasheet_source']}), "
        f"copy {copy} B/s" + (f" ({bw['copy_error']})" if bw.get("copy_error") else "")
    )
    date = time.strftime("%Y-%m-%d", time.gmtime())
    path = cfg.results_file or results_path(cfg.out_dir, str(vers.get("device", "cpu")), date, cfg.tag)
    return RunContext(cfg=cfg, versions=vers, bandwidth=bw, path=path, clock=Clock(cfg.deadline_s))


def run(cfg: RunConfig) -> list[dict[str, Any]]:
    """Run everything ``cfg`` asks for; returns the rows (also written to the results file after every cell)."""
    for backend in cfg.backends:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for peer in cfg.peer:
        if peer not in PEERS:
            raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
    for name, _ in cfg.workloads:
        cfg.scenario(name)  # unknown names fail before anything loads
    ctx = start(cfg)
    for name in cfg.models:
        shape = shapes.get_shape(name)
        if cfg.backends:  # our engine loads it; the peer builds its model from the config alone
            started = time.perf_counter()
            ckpt = shapes.write_checkpoint(shape, cfg.workdir / shape.name)
            cfg.log(f"[{shape.name}] weightless checkpoint in {time.perf_counter() - started:.1f} s: {ckpt}")
        for backend in cfg.backends:
            if cfg.standard and (cfg.cells is None or cfg.cells):
                _phase(ctx, shape, ckpt, backend, "standard")
            if cfg.workloads:
                _phase(ctx, shape, ckpt, backend, "workloads")
        if cfg.peer:
            if ctx.clock.remaining() < 30:
                cfg.log(f"[{shape.name}/peer] skipped: out of time")
            else:
                from bench.vlmbench.peer import run_peer

                run_peer(ctx, shape)
    cfg.log(f"wrote {len(ctx.rows)} rows to {ctx.path}")
    return ctx.rows


def _phase(ctx: RunContext, shape: shapes.ModelShape, ckpt: Path, backend: str, phase: str) -> None:
    """Load an engine for one phase (standard cells or workloads) and run its cells."""
    cfg = ctx.cfg
    tag = f"[{shape.name}/{backend}/{phase}]"
    if ctx.clock.remaining() < 30:
        cfg.log(f"{tag} skipped: out of time")
        return
    if phase == "standard":
        wl = cfg.workload
        size = (engine_batch_size(cfg), cfg.max_model_length or wl.prompt_tokens + wl.output_tokens + 64)
    else:
        size = scenario_cells.engine_size(cfg, shape, cfg.workloads)
    with loaded_engine(ctx, shape, ckpt, backend, max_batch_size=size[0], max_model_length=size[1]) as loaded:
        reason = refusal(loaded, backend, cfg.compile)
        if reason is not None:
            conc = min(cfg.standard_concurrency() or [1]) if phase == "standard" else cfg.workloads[0][1]
            driver = "engine" if phase == "standard" else "http"
            common = {**loaded.common, "scenario": "standard" if phase == "standard" else cfg.workloads[0][0]}
            ctx.add(error_row(ctx, shape.name, backend, driver, conc, common, reason))
            cfg.log(f"{tag} {reason}; cells skipped")
            return
        if phase == "standard":
            standard.run_cells(ctx, shape, ckpt, backend, loaded.engine, loaded.model, loaded.common)
        else:
            scenario_cells.run_cells(
                ctx, shape, ckpt, backend, loaded.engine, loaded.model, loaded.common, cfg.workloads
            )
    free()
