"""Loading an engine: the model and attention backend, the decode kernels, the runner, the warm-ups.

``load_engine(config)`` resolves the checkpoint, loads model + processor with the attention backend
(``attention.resolve``: flash first when asked, sdpa as the in-process fallback, each candidate
warmed up with an image), installs the decode kernels for the loaded model (``kernels.install``),
and builds the ``Engine``. ``start_runner`` picks the decode path (``make_runner``: see
``EngineConfig.kv_cache``) and warms it up: the static cache allocates its slots and captures its
first graph (and compiles, when asked) at load time, and falls back to the dynamic cache when that fails.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from omega_server import attention, kernels, models
from omega_server.engine.errors import describe_error, is_fatal
from omega_server.engine.inputs import check_request, prepare_inputs
from omega_server.engine.runner import Runner
from omega_server.engine.sequence import Seq
from omega_server.engine.static_runner import StaticRunner
from omega_server.engine.types import EngineConfig, EngineInfo, GenerationRequest, SamplingParams
from omega_server.kernels import flash_decode

if TYPE_CHECKING:
    from omega_server.engine.core import Engine

log = logging.getLogger(__name__)


def load_engine(config: EngineConfig) -> Engine:
    """Load model + processor, choose attention (flash -> sdpa fallback), warm up with an image."""
    from omega_server.engine.core import Engine

    if config.max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    if config.max_model_length < 2:
        raise ValueError("max_model_length must be >= 2")
    started = time.monotonic()
    path = models.resolve_model_path(config.model_path)
    if models.pick_device(config.device).startswith("cuda"):
        kernels.configure_sdpa_kernels()
    choice = attention.resolve(
        path,
        requested=config.attn_impl,
        dtype=config.dtype,
        device=config.device,
        warmup=lambda lm: warm_up(lm),
    )
    loaded = choice.loaded
    installed = kernels.install(loaded.model, choice.backend, enabled=config.fast_decode)
    info = EngineInfo(
        attn=choice.backend,
        attn_requested=choice.requested,
        flash_attn=choice.flash_attn.as_dict(),
        dtype=str(loaded.dtype),
        devices=loaded.devices,
        device_names=models.device_names(loaded.devices),
        model_type=loaded.model_type,
        max_batch_size=config.max_batch_size,
        max_model_length=config.max_model_length,
        served_model_name=config.served_model_name or Path(path).name,
        resolved_model_type=loaded.resolved_model_type,
        architecture=type(loaded.model).__name__,
        model_path=config.model_path,
        load_seconds=round(time.monotonic() - started, 3),
        flash_load_failures=choice.flash_load_failures,
        gqa_decode=installed.gqa_decode,
        experts_implementation=installed.experts,
    )
    log.info(
        "engine ready: %s (%s) attn=%s requested=%s dtype=%s devices=%s in %.1fs",
        info.served_model_name,
        info.model_type,
        info.attn,
        info.attn_requested,
        info.dtype,
        info.devices,
        info.load_seconds,
    )
    return Engine(config, loaded, info)


def make_runner(config: EngineConfig, loaded: models.LoadedModel, backend: str) -> Runner:
    """The decode path for this config and backend (see ``EngineConfig.kv_cache``)."""
    if config.kv_cache not in ("auto", "dynamic", "static"):
        raise ValueError(f"kv_cache must be auto, dynamic or static, got {config.kv_cache!r}")
    # sdpa/eager read the slot cache's 4D mask; flash_attention_2 reads its cache_seqlens
    slot_backend = backend in ("sdpa", "eager", flash_decode.BACKEND)
    on_gpu = loaded.model.device.type == "cuda"
    one_device = len(loaded.devices) == 1  # the slot buffers and graphs live on one device
    static = (
        slot_backend
        and one_device
        and (config.kv_cache == "static" or (config.kv_cache == "auto" and on_gpu))
    )
    if not static:
        return Runner(loaded.model, loaded.processor)
    return StaticRunner(
        loaded.model,
        loaded.processor,
        slots=config.max_batch_size,
        width=config.max_model_length,
        graphs=config.cuda_graphs,
        compile_options=(
            {
                "backend": config.compile_backend,
                "mode": config.compile_mode,
                "dynamic": config.compile_dynamic,
            }
            if config.compile
            else None
        ),
    )


def start_runner(config: EngineConfig, loaded: models.LoadedModel, info: EngineInfo) -> Runner:
    """The runner an engine decodes with, warmed up; records the decode path in ``info``.

    When the flash_attention_2 slot-cache step fails its warm-up, the model switches to sdpa in place
    (``info`` says so, as ``attention.resolve``'s fallback does) and the sdpa slot cache is tried; when
    a slot cache fails otherwise, the dynamic cache is used.
    """
    runner = make_runner(config, loaded, info.attn)
    if isinstance(runner, StaticRunner):
        try:  # allocate the slots and capture the first graph now, not at the first request
            _warm_static(runner, loaded, info)
        except Exception as exc:
            if is_fatal(exc):
                raise
            runner = _after_static_failure(config, loaded, info, runner, exc)
    static = runner if isinstance(runner, StaticRunner) else None
    info.kv_cache = "static" if static is not None else "dynamic"
    info.cuda_graphs = static is not None and static.graphs.use_graphs
    info.compiled = static is not None and static.compiled
    info.flash_kernels = list(flash_decode.KERNELS) if static is not None and static.flash else None
    return runner


def _warm_static(runner: StaticRunner, loaded: models.LoadedModel, info: EngineInfo) -> None:
    started = time.perf_counter()
    warm_runner(runner, loaded)  # compiles batch 1 when compiling
    if runner.compiled:
        with torch.inference_mode():
            runner.precompile()
        info.compile_seconds = round(time.perf_counter() - started, 3)
        log.info("decode step compiled (and captured) in %.1f s", info.compile_seconds)


def _after_static_failure(
    config: EngineConfig, loaded: models.LoadedModel, info: EngineInfo, runner: StaticRunner, exc: Exception
) -> Runner:
    """The runner to use after ``runner``'s warm-up raised ``exc``: sdpa's slot cache when the flash
    step failed (the model switched in place), else the dynamic cache."""
    if not runner.flash:
        log.warning("static KV cache failed its warm-up (%s); using the dynamic cache", exc)
        return Runner(loaded.model, loaded.processor)
    error = describe_error(exc)
    log.warning("flash_attention_2 slot-cache decode failed its warm-up, falling back to sdpa: %s", error)
    del runner
    loaded.model.set_attn_implementation(attention.FALLBACK)
    info.attn = attention.FALLBACK
    info.flash_attn = {**info.flash_attn, "loaded": False, "error": error}
    info.flash_load_failures = 1
    info.gqa_decode = kernels.install(loaded.model, info.attn, enabled=config.fast_decode).gqa_decode
    fallback = make_runner(config, loaded, info.attn)
    if isinstance(fallback, StaticRunner):
        try:
            _warm_static(fallback, loaded, info)
        except Exception as again:
            if is_fatal(again):
                raise
            log.warning("static KV cache failed its warm-up (%s); using the dynamic cache", again)
            return Runner(loaded.model, loaded.processor)
    return fallback


def warmup_request(max_tokens: int = 2) -> GenerationRequest:
    """The warm-up chat: one small image and a line of text."""
    from PIL import Image

    image = Image.new("RGB", (64, 64), (127, 64, 200))
    return GenerationRequest(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": "warm-up"}],
            }
        ],
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


def warm_up(loaded: models.LoadedModel) -> None:
    """A prefill with an image plus one batched decode step, on the calling thread; raises on failure."""
    warm_runner(Runner(loaded.model, loaded.processor), loaded)


def warm_runner(runner: Runner, loaded: models.LoadedModel) -> None:
    """The warm-up request's prefill and one decode step on ``runner`` (not counted in its stats)."""
    req = warmup_request()
    prepared = prepare_inputs(loaded.processor, req, check_request(req, 8), max_model_length=1 << 30)
    seq = Seq(prepared=prepared, loop=None, queue=None, emit=lambda item: None)
    stats, runner.stats = runner.stats, None  # warm-up passes are not served requests
    try:
        with torch.inference_mode():
            runner.prefill(seq)
            runner.decode()
            runner.evict([])
        if loaded.model.device.type == "cuda":
            torch.cuda.synchronize()
    finally:
        runner.stats = stats
