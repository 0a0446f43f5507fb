"""Our engine for one bench phase: ``Engine.load`` of the weightless checkpoint with random weights built
on the device (the server's own loading path: aliases, processor, attention choice with the flash ->
sdpa fallback, warm-up), what its rows record about it, and the real server app serving it over HTTP.

The server is reached only through its public surface: ``Engine``, ``EngineConfig`` (and the request
types in ``drivers``), and ``create_app`` (in ``http_driver``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.vlmbench import shapes
from bench.vlmbench.context import RunContext, free, reset_peak


@dataclass
class Loaded:
    """A loaded engine, the model it runs, and the fields every row of it records."""

    engine: Any
    model: Any
    common: dict[str, Any]


@contextmanager
def loaded_engine(
    ctx: RunContext,
    shape: shapes.ModelShape,
    ckpt: Path,
    backend: str,
    *,
    max_batch_size: int,
    max_model_length: int,
) -> Iterator[Loaded]:
    """Load the engine; shut it down and free the GPU afterwards."""
    from omega_server.engine import Engine, EngineConfig

    cfg = ctx.cfg
    free()
    reset_peak()
    started = time.perf_counter()
    with shapes.random_weights(cfg.seed) as built:
        engine = Engine.load(
            EngineConfig(
                model_path=str(ckpt),
                attn_impl=backend,
                dtype=cfg.dtype,
                max_batch_size=max_batch_size,
                max_model_length=max_model_length,
                max_queue=max(256, 2 * max_batch_size),
                device=cfg.device,
                served_model_name=shape.name,
                fast_decode=cfg.fast_decode,
                compile=cfg.compile,
            )
        )
    load_s = time.perf_counter() - started
    info = engine.info
    model = built.last
    common: dict[str, Any] = {
        "attn": str(info.attn),
        "attn_requested": backend,
        "flash_attn": getattr(info, "flash_attn", None),
        "load_seconds": round(load_s, 2),
        "weights_build_seconds": round(built.seconds[-1], 3),
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "fast_decode": cfg.fast_decode,
        "gqa_decode": getattr(info, "gqa_decode", None),
        "workload": {
            "prompt_tokens": cfg.workload.prompt_tokens,
            "output_tokens": cfg.workload.output_tokens,
            "image_size": cfg.workload.image_size,
            "temperature": cfg.workload.temperature,
        },
        "max_batch_size": max_batch_size,
        "max_model_length": max_model_length,
        "kv_cache": getattr(info, "kv_cache", None),
        "cuda_graphs": getattr(info, "cuda_graphs", None),
        "compiled": getattr(info, "compiled", None),
        "compile_seconds": getattr(info, "compile_seconds", None),
        "max_prefill_tokens": getattr(engine.config, "max_prefill_tokens", None),
        "bandwidth": ctx.bandwidth,
    }
    cfg.log(
        f"[{shape.name}/{backend}] engine ready in {load_s:.1f} s: attn={info.attn} params={common['params_b']}B "
        f"kv_cache={common['kv_cache']} cuda_graphs={common['cuda_graphs']} slots={max_batch_size} "
        f"width={max_model_length} compiled={common['compiled']} compile_seconds={common['compile_seconds']}"
    )
    try:
        yield Loaded(engine, model, common)
    finally:
        engine.shutdown()
        built.clear()
        del model, engine
        free()


def refusal(loaded: Loaded, backend: str, compile_asked: bool) -> str | None:
    """Why the cells of this engine must not run: it fell back from the backend asked for, or the
    compile asked for did not happen. None when it runs what was asked."""
    attn = loaded.common["attn"]
    if backend != attn:
        return f"{backend} was asked for but the engine fell back to {attn}: {loaded.common['flash_attn']}"
    if compile_asked and not loaded.common["compiled"]:
        return "--compile asked for but the decode step is not compiled (the engine fell back)"
    return None


def server_for(engine: Any, ckpt: Path, shape: shapes.ModelShape, backend: str, dtype: str) -> Any:
    """The real server app (``create_app``) serving ``engine`` on 127.0.0.1, started and ready."""
    from bench.vlmbench.http_driver import InProcessServer

    return InProcessServer(
        engine,
        model_path=str(ckpt),
        served_model_name=shape.name,
        attn_impl=backend,
        max_batch_size=engine.config.max_batch_size,
        max_model_length=engine.config.max_model_length,
        max_queue=engine.config.max_queue,
        dtype=dtype if dtype != "bf16" else "bfloat16",
    ).start()
