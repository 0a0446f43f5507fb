"""Loading an engine: the model and attention backend, the decode kernels, the runner, the warm-ups.

``load_engine(config)`` resolves the checkpoint, loads model + processor with the attention backend
(``attention.resolve``: flash first when asked, sdpa as the in-process fallback, each candidate
warmed up with an image), installs the decode kernels for the loaded model (``kernels.install``),
and builds the ``Engine``. ``start_runner`` picks the decode path (``make_runner``: see
``EngineConfig.kv_cache``) and warms it up: the static cache's slot count is sized from the device's
free memory after the weights and a profiled prefill (``size_kv``, over ``kv_budget``), it allocates
its slots and captures its first graph (and compiles, when asked) at load time. Running out of memory
there is a fatal ``KVCacheTooSmallError``, never a silent switch to the dynamic cache; another warm-up
failure falls back to the dynamic cache with a warning.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from omega_server import attention, kernels, models
from omega_server.engine import kv_budget, prefix_cache, tensor_parallel
from omega_server.engine.errors import ContextTooLongError, KVCacheTooSmallError, describe_error, is_fatal
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
    if config.tensor_parallel_size != 1:
        raise tensor_parallel.TensorParallelError(
            f"TENSOR_PARALLEL_SIZE={config.tensor_parallel_size}: serving over several ranks is not built "
            "yet (engine.tensor_parallel shards a model; the rank-0 broadcast loop is pending); use 1"
        )
    started = time.monotonic()
    path = models.resolve_model_path(config.model_path)
    check_context(config, models.load_config(path)[0])
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
        tensor_parallel_size=config.tensor_parallel_size,
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


def wants_static(config: EngineConfig, loaded: models.LoadedModel, backend: str) -> bool:
    """Whether this config and backend decode over the static slot cache (``EngineConfig.kv_cache``)."""
    if config.kv_cache not in ("auto", "dynamic", "static"):
        raise ValueError(f"kv_cache must be auto, dynamic or static, got {config.kv_cache!r}")
    # sdpa/eager read the slot cache's 4D mask; flash_attention_2 reads its cache_seqlens
    slot_backend = backend in ("sdpa", "eager", flash_decode.BACKEND)
    on_gpu = loaded.model.device.type == "cuda"
    one_device = len(loaded.devices) == 1  # the slot buffers and graphs live on one device
    return (
        slot_backend
        and one_device
        and (config.kv_cache == "static" or (config.kv_cache == "auto" and on_gpu))
    )


def check_context(config: EngineConfig, model_config: Any) -> None:
    """Refuse a ``max_model_length`` above the model's ``max_position_embeddings`` (a fatal start-up
    error, before the weights load): positions past it were never trained and come out garbled."""
    positions = getattr(kv_budget.text_config(model_config), "max_position_embeddings", None)
    if isinstance(positions, int) and config.max_model_length > positions:
        raise ContextTooLongError(
            f"MAX_MODEL_LENGTH={config.max_model_length} is more than the model's "
            f"max_position_embeddings={positions}; set MAX_MODEL_LENGTH to at most {positions}"
        )


def make_runner(
    config: EngineConfig, loaded: models.LoadedModel, backend: str, slots: int | None = None
) -> Runner:
    """The decode path for this config and backend (see ``EngineConfig.kv_cache``); ``slots`` is the
    static cache's slot count (default ``max_batch_size``)."""
    if not wants_static(config, loaded, backend):
        return Runner(loaded.model, loaded.processor)
    return StaticRunner(
        loaded.model,
        loaded.processor,
        slots=slots or config.max_batch_size,
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


def profile_prefill(loaded: models.LoadedModel, tokens: int) -> None:
    """One text prefill of ``tokens`` tokens (the largest a request can send), for its memory peak."""
    model = loaded.model
    ids = torch.zeros((1, tokens), dtype=torch.long, device=model.device)
    kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, return_dict=True, **kwargs)
    if hasattr(getattr(model, "model", None), "rope_deltas"):
        model.model.rope_deltas = None


def size_kv(config: EngineConfig, loaded: models.LoadedModel) -> kv_budget.KVBudget | None:
    """The static cache's slot count from the device's memory (``kv_budget.plan_slots``), or None
    where there are no numbers to size from (the CPU without ``config.memory_probe``).

    Raises ``KVCacheTooSmallError`` when not one sequence of ``max_model_length`` tokens fits.
    """
    device = loaded.model.device
    probe = config.memory_probe
    if probe is None:
        if device.type != "cuda":
            return None
        probe = lambda profile: kv_budget.measure_cuda(device, profile)  # noqa: E731
    tokens = max(config.max_model_length - 1, 1)
    memory = probe(lambda: profile_prefill(loaded, tokens))
    budget = kv_budget.plan_slots(
        bytes_per_token=kv_budget.bytes_per_token(loaded.model.config, loaded.model.dtype.itemsize),
        memory=memory,
        utilization=config.gpu_memory_utilization,
        max_batch_size=config.max_batch_size,
        max_model_length=config.max_model_length,
    )
    (log.warning if budget.lowered else log.info)("%s", budget.describe())
    return budget


def start_runner(config: EngineConfig, loaded: models.LoadedModel, info: EngineInfo) -> Runner:
    """The runner an engine decodes with, warmed up; records the decode path and its slots in ``info``.

    When the flash_attention_2 slot-cache step fails its warm-up, the model switches to sdpa in place
    (``info`` says so, as ``attention.resolve``'s fallback does) and the sdpa slot cache is tried; when
    a slot cache runs out of memory at its warm-up the start fails (``KVCacheTooSmallError``); when it
    fails otherwise, the dynamic cache is used.
    """
    budget = size_kv(config, loaded) if wants_static(config, loaded, info.attn) else None
    slots = budget.slots if budget is not None else None
    runner = make_runner(config, loaded, info.attn, slots=slots)
    if isinstance(runner, StaticRunner):
        try:  # allocate the slots and capture the first graph now, not at the first request
            _warm_static(runner, loaded, info)
        except Exception as exc:
            if is_fatal(exc):
                raise
            if isinstance(exc, torch.OutOfMemoryError):
                raise KVCacheTooSmallError(
                    f"the KV cache of {runner.slot_cache.slots} slots x MAX_MODEL_LENGTH="
                    f"{config.max_model_length} tokens ran out of device memory at its warm-up "
                    f"({describe_error(exc)}); lower GPU_MEMORY_UTILIZATION, MAX_BATCH_SIZE or MAX_MODEL_LENGTH"
                ) from exc
            runner = _after_static_failure(config, loaded, info, runner, exc, slots)
    static = runner if isinstance(runner, StaticRunner) else None
    # the prefix cache takes what the KV budget holds beyond the slots (never a slot of it)
    prefix_tokens = config.prefix_cache_tokens if config.prefix_caching else 0
    if budget is not None:
        prefix_tokens = min(prefix_tokens, budget.spare_tokens)
    if static is not None and prefix_tokens >= prefix_cache.BLOCK:
        static.prefix = prefix_cache.PrefixCache(prefix_tokens)
        log.info("prefix caching on: up to %d tokens of prompt-prefix KV", prefix_tokens)
    info.prefix_caching = static is not None and static.prefix is not None
    info.prefix_cache_tokens = prefix_tokens if info.prefix_caching else 0
    info.kv_cache = "static" if static is not None else "dynamic"
    info.cuda_graphs = static is not None and static.graphs.use_graphs
    info.compiled = static is not None and static.compiled
    info.flash_kernels = list(flash_decode.KERNELS) if static is not None and static.flash else None
    info.kv_slots = static.slot_cache.slots if static is not None else 0
    info.kv_token_capacity = info.kv_slots * config.max_model_length
    info.kv_sized_from_memory = static is not None and budget is not None
    info.kv_budget_bytes = budget.budget_bytes if static is not None and budget is not None else 0
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
    config: EngineConfig,
    loaded: models.LoadedModel,
    info: EngineInfo,
    runner: StaticRunner,
    exc: Exception,
    slots: int | None,
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
    fallback = make_runner(config, loaded, info.attn, slots=slots)
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
