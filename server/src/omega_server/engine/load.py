"""Loading an engine: the model and attention backend, the decode kernels, the runner, the warm-ups.

``load_engine(config)`` resolves the checkpoint, loads model + processor with the attention backend
(``attention.resolve``: flash first when asked, sdpa as the in-process fallback, each candidate
warmed up with an image), installs the decode kernels for the loaded model (``kernels.install``),
and builds the ``Engine``. ``start_runner`` picks the decode path (``make_runner``: see
``EngineConfig.kv_cache``) and warms it up: the static cache allocates its slots and captures its
first graph (and compiles, when asked) at load time, and falls back to the dynamic cache when that fails.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from omega_server import attention, kernels, models
from omega_server.engine.errors import is_fatal
from omega_server.engine.inputs import check_request, prepare_inputs
from omega_server.engine.runner import Runner
from omega_server.engine.sequence import Seq
from omega_server.engine.static_runner import StaticRunner
from omega_server.engine.types import EngineConfig, EngineInfo, GenerationRequest, SamplingParams

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
        sampling_defaults=sampling_defaults(Path(path)),
    )
    if info.sampling_defaults:
        log.info("sampling defaults from generation_config.json: %s", info.sampling_defaults)
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


#: generation_config.json fields that are defaults for a request's unset sampling fields (vLLM's set)
GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def sampling_defaults(checkpoint: Path) -> dict[str, float]:
    """The sampling values the checkpoint's ``generation_config.json`` sets (only those it sets).

    They are the defaults of a request's unset fields (``chat_request.sampling_params``), as vLLM
    uses them. A missing or unreadable file gives none; values out of range are left out (logged).
    """
    try:
        raw = json.loads((checkpoint / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    valid = {
        "temperature": lambda v: 0 <= v <= 2,
        "top_p": lambda v: 0 < v <= 1,
        "top_k": lambda v: v >= -1 and float(v).is_integer(),
        "min_p": lambda v: 0 <= v <= 1,
        "repetition_penalty": lambda v: v > 0,
    }
    out: dict[str, float] = {}
    for name in GENERATION_DEFAULTS:
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid[name](value):
            log.warning("generation_config.json: %s=%r is not a usable default; ignored", name, value)
            continue
        out[name] = value
    return out


def vocab_size(model: Any) -> int:
    """Rows of the model's logits: the token ids a request may name (``stop_token_ids``, ``logit_bias``)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.vocab_size)


def make_runner(config: EngineConfig, loaded: models.LoadedModel, backend: str) -> Runner:
    """The decode path for this config and backend (see ``EngineConfig.kv_cache``)."""
    if config.kv_cache not in ("auto", "dynamic", "static"):
        raise ValueError(f"kv_cache must be auto, dynamic or static, got {config.kv_cache!r}")
    masks_4d = backend in ("sdpa", "eager")
    on_gpu = loaded.model.device.type == "cuda"
    one_device = len(loaded.devices) == 1  # the slot buffers and graphs live on one device
    static = (
        masks_4d and one_device and (config.kv_cache == "static" or (config.kv_cache == "auto" and on_gpu))
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
    """The runner an engine decodes with, warmed up; records the decode path in ``info``."""
    runner = make_runner(config, loaded, info.attn)
    if isinstance(runner, StaticRunner):
        try:  # allocate the slots and capture the first graph now, not at the first request
            started = time.perf_counter()
            warm_runner(runner, loaded)  # compiles batch 1 when compiling
            if runner.compiled:
                with torch.inference_mode():
                    runner.precompile()
                info.compile_seconds = round(time.perf_counter() - started, 3)
                log.info("decode step compiled (and captured) in %.1f s", info.compile_seconds)
        except Exception as exc:
            if is_fatal(exc):
                raise
            log.warning("static KV cache failed its warm-up (%s); using the dynamic cache", exc)
            runner = Runner(loaded.model, loaded.processor)
    static = runner if isinstance(runner, StaticRunner) else None
    info.kv_cache = "static" if static is not None else "dynamic"
    info.cuda_graphs = static is not None and static.graphs.use_graphs
    info.compiled = static is not None and static.compiled
    return runner


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
