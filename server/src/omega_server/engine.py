"""The generation engine: continuous batching over a KV cache, on a worker thread (no FastAPI here).

``Engine.load(config)`` loads model + processor (``models``), picks the attention backend with an
in-process flash -> sdpa fallback (``attention``) and runs a warm-up forward with an image.
``prepare()`` turns a chat into model inputs (validation errors are typed), ``stream()`` queues it and
yields ``StepOutput`` deltas.

How generation runs: one worker thread owns the model. Waiting requests are prefilled (their images
and exact prompts) and then join the running batch between decode steps. Every decode step is one
forward pass for all running sequences (up to ``max_batch_size``), each with its own sampling
parameters, seed, stop strings and token budget; sampling runs on the device for the whole batch.
Finished or cancelled sequences leave between steps. Greedy outputs equal ``model.generate()``'s.

On the static cache (below) several waiting requests are prefilled in one forward pass (right-padded,
up to ``max_prefill_tokens``), and decode steps are pipelined one deep: step k+1 is queued on the
device, its input tokens fed from step k's sampling there, before the host reads step k's tokens
(one non-blocking copy into pinned memory) and streams them. On the dynamic cache each request is
prefilled alone and its cache rows are left-padded to the batch's length.

Two KV caches (``EngineConfig.kv_cache``): "dynamic" (transformers' DynamicCache, left-padded rows; any
backend) and "static" (``kvslots``: preallocated slots and a 4D mask, decode steps replayed as CUDA
graphs on a GPU; sdpa/eager on one device). "auto" takes static on a GPU where it can, else dynamic.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from omega_server import attention, gqa_decode, kvslots, models, moe_decode

log = logging.getLogger(__name__)

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineInfo",
    "EngineStats",
    "GenerationRequest",
    "InvalidRequestError",
    "PreparedRequest",
    "PromptTooLongError",
    "QueueFullError",
    "SamplingParams",
    "StepOutput",
]

ROLES = ("system", "user", "assistant")

# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. ``temperature == 0`` is greedy decoding."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens


@dataclass
class GenerationRequest:
    """A chat in HF format: ``{"role", "content": [{"type": "text", "text"} | {"type": "image", "image": PIL}]}``."""

    messages: list[dict[str, Any]]
    params: SamplingParams


@dataclass
class StepOutput:
    """One streamed delta. The last item of a stream has ``finished=True`` and a ``finish_reason``."""

    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | None
    prompt_tokens: int
    completion_tokens: int


class EngineError(Exception):
    """Base of the engine's errors: ``message``, ``param`` (the request field at fault), ``code``."""

    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidRequestError(EngineError):
    """The request cannot be served as given (HTTP 400)."""

    default_code = "invalid_request"


class PromptTooLongError(InvalidRequestError):
    """Prompt tokens plus max_tokens exceed MAX_MODEL_LENGTH (HTTP 400)."""

    default_code = "context_length_exceeded"


class QueueFullError(EngineError):
    """The bounded queue is full (HTTP 429 with Retry-After)."""

    default_code = "queue_full"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class EngineDeadError(EngineError):
    """The engine stopped (shut down or an unrecoverable device error) (HTTP 503)."""

    default_code = "engine_dead"


@dataclass
class EngineConfig:
    """Engine settings (the server maps its environment onto these)."""

    model_path: str
    attn_impl: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 4
    max_model_length: int = 8192
    max_queue: int = 64
    device: str = "auto"
    served_model_name: str | None = None
    max_images_per_request: int = 8
    # "dynamic" (DynamicCache, any backend), "static" (slot cache; sdpa/eager only) or "auto"
    # (static with CUDA graphs on a GPU with sdpa/eager, dynamic otherwise)
    kv_cache: str = "auto"
    cuda_graphs: bool = True  # replay static-cache decode steps as CUDA graphs (GPU only)
    # static cache: waiting requests are prefilled together, up to this many (padded) prompt tokens
    # per forward pass; 0 prefills one request at a time
    max_prefill_tokens: int = 8192
    # static cache: torch.compile the decode step (opt-in). The compiled step is warmed up (compiled)
    # and, on a GPU, captured in the engine's own CUDA graphs for every batch bucket at load time; it
    # decodes at one width (max_model_length), so each batch shape compiles once.
    compile: bool = False
    compile_backend: str = "inductor"  # "eager"/"aot_eager" check the plumbing without inductor
    compile_mode: str | None = None  # e.g. "max-autotune-no-cudagraphs"; never "reduce-overhead"
    # None: automatic (batch 1 static, the first other batch marks the batch dim dynamic); False: one
    # static compile per batch bucket
    compile_dynamic: bool | None = None
    # decode kernels (bench/README.md, run 7): one-token SDPA on the unexpanded key/value heads
    # (``gqa_decode``), and on a GPU with Triton the fused experts for MoE layers at small batch
    # (``moe_decode``); False keeps transformers' own paths
    fast_decode: bool = True


@dataclass
class EngineInfo:
    """What the engine runs; /health is built from it."""

    attn: str  # the backend really in use (model.config._attn_implementation)
    attn_requested: str
    flash_attn: dict[str, Any]  # {available, loaded, version, error}
    dtype: str  # "torch.bfloat16"
    devices: list[str]
    device_names: list[str]
    model_type: str  # as the checkpoint declares it
    max_batch_size: int
    max_model_length: int
    served_model_name: str = ""
    resolved_model_type: str = ""
    architecture: str = ""
    model_path: str = ""
    load_seconds: float = 0.0
    flash_load_failures: int = 0
    kv_cache: str = "dynamic"  # the decode path in use: dynamic | static
    cuda_graphs: bool = False
    compiled: bool = False  # the static decode step runs through torch.compile
    compile_seconds: float = 0.0  # compiling (and capturing) the decode step at load time
    gqa_decode: bool = False  # one-token attention packs the grouped heads (no key/value copies)
    # MoE models: the experts path (omega_fused_decode, grouped_mm, ...); None for a dense model
    experts_implementation: str | None = None


@dataclass
class EngineStats:
    """Counters (read without locking; ints are updated by the worker thread)."""

    forward_passes: int = 0
    requests_batched_total: int = 0  # requests that shared at least one forward pass with another
    max_batch_seen: int = 0
    queue_depth: int = 0
    running: int = 0
    prefill_passes: int = 0
    decode_passes: int = 0
    requests_total: int = 0
    completion_tokens_total: int = 0
    errors_total: int = 0


@dataclass
class PreparedRequest:
    """Model inputs (on CPU) for one request, made by ``Engine.prepare``."""

    inputs: dict[str, torch.Tensor]
    prompt_tokens: int
    params: SamplingParams
    num_images: int = 0


# --------------------------------------------------------------------------- request preparation


def _validate(req: GenerationRequest, max_images: int) -> list[Any]:
    """Check the chat shape and sampling parameters; return the images in order."""
    from PIL import Image

    p = req.params
    if not isinstance(p.max_tokens, int) or p.max_tokens < 1:
        raise InvalidRequestError(
            f"max_tokens must be a positive integer, got {p.max_tokens!r}", param="max_tokens"
        )
    if not (isinstance(p.temperature, (int, float)) and math.isfinite(p.temperature) and p.temperature >= 0):
        raise InvalidRequestError(f"temperature must be >= 0, got {p.temperature!r}", param="temperature")
    if not (isinstance(p.top_p, (int, float)) and 0 < p.top_p <= 1):
        raise InvalidRequestError(f"top_p must be in (0, 1], got {p.top_p!r}", param="top_p")
    if any(not isinstance(s, str) or not s for s in p.stop):
        raise InvalidRequestError("stop strings must be non-empty strings", param="stop")
    # torch.Generator.manual_seed takes [-2**63, 2**64); outside it would raise on the worker thread.
    if p.seed is not None and not (isinstance(p.seed, int) and -(2**63) <= p.seed < 2**64):
        raise InvalidRequestError(f"seed must be a 64-bit integer, got {p.seed!r}", param="seed")
    if not isinstance(req.messages, list) or not req.messages:
        raise InvalidRequestError("messages must be a non-empty list", param="messages")
    images: list[Any] = []
    has_content = False
    for i, msg in enumerate(req.messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            role = msg.get("role") if isinstance(msg, dict) else None
            raise InvalidRequestError(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                param=f"messages.{i}.role",
            )
        content = msg.get("content")
        if isinstance(content, str):
            has_content = has_content or bool(content)
            continue
        if not isinstance(content, list):
            raise InvalidRequestError(
                f"messages[{i}].content must be a list of parts", param=f"messages.{i}.content"
            )
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                has_content = has_content or bool(part["text"])
            elif kind == "image" and isinstance(part.get("image"), Image.Image):
                images.append(part["image"])
                has_content = True
            else:
                raise InvalidRequestError(
                    f"messages[{i}].content[{j}]: unsupported part type {kind!r}",
                    param=f"messages.{i}.content.{j}.type",
                )
    if not has_content:
        raise InvalidRequestError("messages have no content", param="messages")
    if len(images) > max_images:
        raise InvalidRequestError(f"too many images: {len(images)} (at most {max_images})", param="messages")
    return images


def _rgb(image: Any) -> Any:
    return image if image.mode == "RGB" else image.convert("RGB")


# --------------------------------------------------------------------------- the decode machinery


@dataclass
class _Seq:
    """One request in flight (owned by the worker thread once admitted)."""

    prepared: PreparedRequest
    loop: asyncio.AbstractEventLoop | None
    queue: asyncio.Queue[Any] | None
    emit: Callable[[Any], None] | None = None  # for callers without an event loop (warm-up, tests)
    cancelled: bool = False
    done: bool = False
    generator: torch.Generator | None = None
    token_ids: list[int] = field(default_factory=list)
    cache_len: int = 0  # real (unpadded) tokens in this sequence's KV cache
    next_pos: int = 0  # text position of the next token fed
    rope_delta: int = 0  # M-RoPE offset (Qwen-VL); 0 elsewhere
    last_token: int = 0
    # incremental detokenization (prefix/read offsets) and stop-string hold-back
    prefix_offset: int = 0
    read_offset: int = 0
    text: str = ""
    emitted: int = 0
    batched: bool = False

    def send(self, item: Any) -> None:
        if self.emit is not None:
            self.emit(item)
        elif self.loop is not None and self.queue is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class _Runner:
    """Prefill, batched decode and sampling on one model. Used only from one thread at a time."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.device = model.get_input_embeddings().weight.device
        self.mrope = hasattr(getattr(model, "model", None), "rope_deltas")
        params = inspect.signature(model.forward).parameters
        self.logits_to_keep = "logits_to_keep" in params
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.eos_ids = self._eos_ids()
        # the running batch
        self.seqs: list[_Seq] = []
        self.cache: Any = None
        self.observer: Callable[[int], None] | None = None
        self.stats: EngineStats | None = None

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if value is None:
                continue
            ids.update([value] if isinstance(value, int) else list(value))
        return ids

    # -- forward passes

    def _forward(self, batch: int, keep: int | torch.Tensor = 1, **kwargs: Any) -> Any:
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = keep
        out = self.model(**kwargs, use_cache=True, return_dict=True)
        if self.stats is not None:
            self.stats.forward_passes += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, batch)
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer(batch)
        return out

    def _count_decode(self, n: int) -> None:
        if self.stats is not None:
            self.stats.decode_passes += 1
            if n > 1:
                for s in self.seqs:
                    if not s.batched:
                        s.batched = True
                        self.stats.requests_batched_total += 1

    def _count_pass(self, n: int) -> None:
        """Count a decode pass that did not go through ``_forward`` (graph replay)."""
        if self.stats is not None:
            self.stats.forward_passes += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, n)
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer(n)
        self._count_decode(n)

    def prefill(self, seq: _Seq) -> None:
        """Run the prompt (with its images) alone, sample the first token, and join the batch."""
        inputs = self._to_device(seq.prepared.inputs)
        if self.mrope:
            self.model.model.rope_deltas = None  # computed afresh from this prompt's images
        out = self._forward(1, **inputs)
        if self.stats is not None:
            self.stats.prefill_passes += 1
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        length = int(inputs["input_ids"].shape[1])
        seq.cache_len = length
        seq.next_pos = length
        if self.mrope:
            deltas = self.model.model.rope_deltas
            seq.rope_delta = int(deltas.reshape(-1)[0].item()) if deltas is not None else 0
            self.model.model.rope_deltas = None
        token = self._sample([seq], out.logits[:, -1, :])[0]
        seq.last_token = token
        self._merge(seq, cache)

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                out[key] = value.to(self.model.dtype)
        return out

    batch_prefill = False  # prefill_batch() exists (the static slot cache)

    def prefill_batch(self, seqs: list[_Seq]) -> None:
        """Prefill several sequences in one forward pass (see ``_StaticRunner``)."""
        raise NotImplementedError

    def _merge(self, seq: _Seq, cache: Any) -> None:
        """Append a prefilled sequence's cache rows to the batch cache, left-padding the shorter side."""
        if self.cache is None or not self.seqs:
            self.cache = cache
            self.seqs = [seq]
            return
        batch_len = self.cache.get_seq_length()
        new_len = cache.get_seq_length()
        width = max(batch_len, new_len)
        for layer, new in zip(self.cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat([_left_pad(layer.keys, width), _left_pad(new.keys, width)], dim=0)
            layer.values = torch.cat([_left_pad(layer.values, width), _left_pad(new.values, width)], dim=0)
        self.seqs.append(seq)

    def evict(self, keep: list[int]) -> None:
        """Keep only the batch rows in ``keep`` and drop padding columns no row needs."""
        if not keep:
            self.seqs = []
            self.cache = None
            return
        if len(keep) == len(self.seqs):
            return
        width = self.cache.get_seq_length()
        kept = [self.seqs[i] for i in keep]
        trim = width - max(s.cache_len for s in kept)
        index = torch.tensor(keep, device=self.cache.layers[0].keys.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:, :]
            layer.values = layer.values.index_select(0, index)[:, :, trim:, :]
        self.seqs = kept

    def decode(self) -> list[int]:
        """One forward pass for every running sequence; returns the sampled tokens, in batch order."""
        seqs = self.seqs
        n = len(seqs)
        width = self.cache.get_seq_length()
        dev = self.device
        input_ids = torch.tensor([[s.last_token] for s in seqs], dtype=torch.long, device=dev)
        lengths = torch.tensor([s.cache_len for s in seqs], dtype=torch.long, device=dev)
        cols = torch.arange(width + 1, device=dev)
        mask = (cols[None, :] >= (width - lengths)[:, None]).long()
        pos = torch.tensor([[s.next_pos] for s in seqs], dtype=torch.long, device=dev)
        if self.mrope:
            delta = torch.tensor([[s.rope_delta] for s in seqs], dtype=torch.long, device=dev)
            position_ids = (pos + delta)[None].expand(3, n, 1)
        else:
            position_ids = pos
        kwargs = {self.cache_kw: self.cache}
        out = self._forward(n, input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs)
        self._count_decode(n)
        for s in seqs:
            s.cache_len += 1
            s.next_pos += 1
        tokens = self._sample(seqs, out.logits[:, -1, :])
        for s, t in zip(seqs, tokens, strict=True):
            s.last_token = t
        return tokens

    # -- sampling

    def _sample(self, seqs: list[_Seq], logits: torch.Tensor) -> list[int]:
        """Sample one token per row and read them back (one device->host copy)."""
        out: list[int] = self._sample_device(seqs, logits).tolist()
        return out

    def _sample_device(self, seqs: list[_Seq], logits: torch.Tensor) -> torch.Tensor:
        """Sample one token per row on the logits' device, for the whole batch at once; no host sync.

        Greedy rows (temperature 0) take the argmax. The other rows are scaled by their temperature and
        cut to their top-p nucleus in batched tensor ops; a row with a seed draws from its own
        generator (reproducible), the unseeded ones draw together from the default generator.
        """
        greedy = logits.float().argmax(dim=-1)
        rows = [i for i, s in enumerate(seqs) if s.prepared.params.temperature > 1e-5]
        if not rows:
            return greedy
        dev = logits.device
        params = [seqs[i].prepared.params for i in rows]
        index = torch.tensor(rows, device=dev)
        temps = torch.tensor([p.temperature for p in params], device=dev, dtype=torch.float32)
        probs = torch.softmax(logits.float().index_select(0, index) / temps[:, None], dim=-1)
        if any(p.top_p < 1.0 for p in params):
            top_p = torch.tensor([p.top_p for p in params], device=dev, dtype=torch.float32)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            cumulative = sorted_probs.cumsum(-1)
            drop = cumulative - sorted_probs > top_p[:, None]  # keep the smallest prefix reaching top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
        picked = torch.empty(len(rows), dtype=torch.long, device=dev)
        seeded = [j for j, p in enumerate(params) if p.seed is not None]
        free = [j for j, p in enumerate(params) if p.seed is None]
        for j in seeded:
            picked[j : j + 1] = torch.multinomial(probs[j], 1, generator=seqs[rows[j]].generator)
        if free:
            at = torch.tensor(free, device=dev)
            picked[at] = torch.multinomial(probs.index_select(0, at), 1).squeeze(1)
        return greedy.index_put((index,), picked)

    # -- pipelined decoding (see Engine._step)

    pipelined = False  # launch() returns a step already read back

    def launch(self) -> _Pending:
        """Queue one decode step for every running sequence; ``wait()`` on the result gives its tokens."""
        seqs = list(self.seqs)
        return _Pending(seqs, tokens=self.decode())


class _Pending:
    """A decode step in flight: its sequences (in row order) and where its tokens will land on the host."""

    def __init__(
        self,
        seqs: list[_Seq],
        *,
        tokens: list[int] | None = None,
        host: torch.Tensor | None = None,
        event: Any = None,
    ) -> None:
        self.seqs = seqs
        self._tokens = tokens
        self._host = host
        self._event = event

    def wait(self) -> list[int]:
        """The step's tokens, in row order (waits only for this step, not for later queued ones)."""
        if self._tokens is None:
            assert self._host is not None
            if self._event is not None:
                self._event.synchronize()
            self._tokens = self._host[: len(self.seqs)].tolist()
        return self._tokens


class _StaticRunner(_Runner):
    """Decoding over a preallocated slot cache (``kvslots``), replayed as CUDA graphs on a GPU.

    Prefill is the same as the dynamic runner's (one sequence, its images); the prefilled cache is
    then copied into a free slot. Only for attention backends that take a 4D mask (sdpa, eager).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        slots: int,
        width: int,
        graphs: bool,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, processor)
        self.width = width
        self.slot_cache = kvslots.SlotCache(slots, width, self.device, self.mrope)
        self.graphs = kvslots.GraphRunner(self._static_forward, graphs and self.device.type == "cuda")
        # the model call of one decode step; torch.compile'd when asked (the slicing and the slot
        # cache's view stay outside, so the compiled code sees tensors and one fixed width)
        self.compiled = compile_options is not None
        self._step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = self._model_step
        if compile_options is not None:
            import torch._dynamo as dynamo

            # one graph per batch shape (and none per width); the default limit of 8 is too low
            limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), 64))
            self._step = torch.compile(self._model_step, fullgraph=False, **compile_options)
        cuda = self.device.type == "cuda"
        # two host buffers: step k+1's tokens are copied while the host still reads step k's
        self._host = [torch.zeros(slots, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
        self._flip = 0

    pipelined = True

    def _static_forward(self, batch: int, width: int) -> torch.Tensor:
        sc = self.slot_cache
        assert sc.mask is not None
        sc.view = (batch, width)
        position_ids = sc.position_ids[:, :batch] if self.mrope else sc.position_ids[:batch]
        if self.compiled:  # (3, slots, 1)[:, :batch] is contiguous only at batch == slots: always a
            # fresh contiguous copy (not a view at one batch only), or that batch compiles again
            position_ids = position_ids.clone(memory_format=torch.contiguous_format)
        return self._step(sc.input_ids[:batch], sc.mask[:batch, :, :, :width], position_ids)

    def _model_step(
        self, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {self.cache_kw: self.slot_cache}
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
            **kwargs,
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def precompile(self) -> None:
        """Compile (and on a GPU capture) the decode step for every batch bucket now.

        Idle slots attend to column 0 only, so these passes write garbage nowhere a sequence reads.
        """
        sc = self.slot_cache
        batches = sorted({kvslots.bucket(n, sc.slots) for n in range(1, sc.slots + 1)})
        if not self.graphs.use_graphs:
            batches = [1, *([2] if sc.slots > 1 else [])]  # eager: batch 1, then the dynamic shape
        for batch in batches:
            one = time.perf_counter()
            self.graphs.prepare(batch, self.width)
            log.info("decode step compiled for batch %d in %.1f s", batch, time.perf_counter() - one)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _merge(self, seq: _Seq, cache: Any, row: int = 0) -> None:
        layers = [(layer.keys[row : row + 1], layer.values[row : row + 1]) for layer in cache.layers]
        sc = self.slot_cache
        if not sc.allocated:
            sc.allocate(layers, self.model.dtype)
        sc.load(len(self.seqs), layers, seq.next_pos, seq.rope_delta, seq.last_token, seq.cache_len)
        self.seqs.append(seq)

    batch_prefill = True

    def prefill_batch(self, seqs: list[_Seq]) -> None:
        """Prefill several sequences (their images too) in one forward pass, then load each into a slot.

        The prompts are right-padded to the longest: under the causal mask a real token never sees
        the padding after it, so each row computes what it would alone. Only the real columns of
        each row's cache are copied into its slot; the logits are taken at each row's last token.
        """
        lengths = [int(s.prepared.inputs["input_ids"].shape[1]) for s in seqs]
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        inputs = self._to_device(collate([s.prepared.inputs for s in seqs], pad_id))
        if self.mrope:
            self.model.model.rope_deltas = None
        last = sorted({n - 1 for n in lengths})
        keep = torch.tensor(last, device=self.device)
        out = self._forward(len(seqs), keep=keep, **inputs)
        if self.stats is not None:
            self.stats.prefill_passes += 1
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if self.logits_to_keep:  # (batch, len(last), vocab)
            cols = torch.tensor([last.index(n - 1) for n in lengths], device=self.device)
        else:  # (batch, longest, vocab)
            cols = torch.tensor([n - 1 for n in lengths], device=self.device)
        logits = out.logits[torch.arange(len(seqs), device=self.device), cols]
        deltas = [0] * len(seqs)
        if self.mrope:
            rope = self.model.model.rope_deltas
            if rope is not None:
                deltas = [int(d) for d in rope.reshape(len(seqs), -1)[:, 0].tolist()]
            self.model.model.rope_deltas = None
        tokens = self._sample(seqs, logits)
        for row, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
            seq.cache_len = seq.next_pos = n
            seq.rope_delta = deltas[row]
            seq.last_token = tokens[row]
            self._merge(seq, cache, row)

    def evict(self, keep: list[int]) -> None:
        sc = self.slot_cache
        if keep == list(range(len(self.seqs))):
            return
        if sc.allocated:
            for new, old in enumerate(keep):
                if new != old:
                    sc.move(old, new, self.seqs[old].cache_len)
            for slot in range(len(keep), len(self.seqs)):
                sc.reset(slot)
        self.seqs = [self.seqs[i] for i in keep]

    def decode(self) -> list[int]:
        return self.launch().wait()

    def launch(self) -> _Pending:
        """Queue a decode step without waiting for it: inputs, graph replay, sampling and the feedback
        of the sampled tokens into the next step's inputs all stay on the device; the tokens are then
        copied (non-blocking) into a pinned host buffer, with an event to wait on."""
        seqs = list(self.seqs)
        n = len(seqs)
        sc = self.slot_cache
        need = max(s.cache_len for s in seqs) + 1
        if self.graphs.use_graphs:
            batch, width = kvslots.bucket(n, sc.slots), kvslots.bucket(need, self.width, floor=256)
        else:
            batch, width = n, need
        if self.compiled:  # one width: a width per bucket would compile every batch shape again
            width = self.width
        sc.prepare_step(n)
        logits = self.graphs.run(batch, width)
        self._count_pass(n)
        sc.finish_step(n)
        for s in seqs:
            s.cache_len += 1
            s.next_pos += 1
        sampled = self._sample_device(seqs, logits[:n])
        sc.set_tokens(n, sampled)
        host = self._host[self._flip]
        self._flip ^= 1
        host[:n].copy_(sampled, non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return _Pending(seqs, host=host, event=event)


def _make_runner(config: EngineConfig, loaded: models.LoadedModel, backend: str) -> _Runner:
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
        return _Runner(loaded.model, loaded.processor)
    return _StaticRunner(
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


# per-token inputs (batch, length): right-padded when prompts are batched; every other tensor is
# concatenated along dim 0 (image patches, grids, pixel batches), in request order
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def collate_key(inputs: dict[str, torch.Tensor]) -> tuple[Any, ...]:
    """Requests with equal keys can share a prefill: same input names and same trailing shapes."""
    return tuple(
        sorted((k, () if k in TOKEN_KEYS else tuple(v.shape[1:]), str(v.dtype)) for k, v in inputs.items())
    )


def collate(items: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of model inputs from several requests' inputs (each of batch 1), right-padded."""
    longest = max(int(x["input_ids"].shape[1]) for x in items)
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        parts = [x[key] for x in items]
        if key in TOKEN_KEYS:
            fill = pad_id if key == "input_ids" else 0
            parts = [
                torch.cat([p, p.new_full((p.shape[0], longest - p.shape[1]), fill)], dim=1) for p in parts
            ]
        out[key] = torch.cat(parts, dim=0)
    mask = torch.cat(
        [torch.arange(longest)[None] < int(x["input_ids"].shape[1]) for x in items], dim=0
    ).long()
    out["attention_mask"] = mask
    return out


def prefill_groups(seqs: list[_Seq], max_tokens: int) -> list[list[_Seq]]:
    """Split admitted sequences into prefill batches: equal ``collate_key``, padded size <= max_tokens."""
    groups: list[list[_Seq]] = []
    open_groups: dict[tuple[Any, ...], list[_Seq]] = {}
    for seq in seqs:
        key = collate_key(seq.prepared.inputs)
        group = open_groups.get(key)
        n = int(seq.prepared.inputs["input_ids"].shape[1])
        if group is not None:
            longest = max(n, *(int(s.prepared.inputs["input_ids"].shape[1]) for s in group))
            if longest * (len(group) + 1) <= max_tokens:
                group.append(seq)
                continue
        group = [seq]
        open_groups[key] = group
        groups.append(group)
    return groups


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[-2]
    if missing <= 0:
        return t
    pad = t.new_zeros((*t.shape[:-2], missing, t.shape[-1]))
    return torch.cat([pad, t], dim=-2)


# --------------------------------------------------------------------------- the engine


class Engine:
    """A loaded model serving generation requests; see the module docstring.

    Public surface: ``load``, ``info``, ``prepare``, ``stream``, ``stats``, ``batch_observer``, ``alive``,
    ``shutdown``. Thread-safe; ``stream`` must be iterated on an asyncio event loop.
    """

    def __init__(self, config: EngineConfig, loaded: models.LoadedModel, info: EngineInfo) -> None:
        self.config = config
        self.info = info
        self.stats = EngineStats()
        self.batch_observer: Callable[[int], None] | None = None
        self.alive = True
        self._loaded = loaded
        self._processor = loaded.processor
        self._prep_lock = threading.Lock()  # tokenizers/processors are not safe to share across threads
        self._cond = threading.Condition()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._stopping = False
        self._dead_reason = ""
        self._runner = _make_runner(config, loaded, info.attn)
        self._pending: _Pending | None = None  # the decode step queued on the device, not yet read
        if isinstance(self._runner, _StaticRunner):
            try:  # allocate the slots and capture the first graph now, not at the first request
                started = time.perf_counter()
                _warm_runner(self._runner, loaded)  # compiles batch 1 when compiling
                if self._runner.compiled:
                    with torch.inference_mode():
                        self._runner.precompile()
                    info.compile_seconds = round(time.perf_counter() - started, 3)
                    log.info("decode step compiled (and captured) in %.1f s", info.compile_seconds)
            except Exception as exc:
                if _fatal(exc):
                    raise
                log.warning("static KV cache failed its warm-up (%s); using the dynamic cache", exc)
                self._runner = _Runner(loaded.model, loaded.processor)
        info.kv_cache = "static" if isinstance(self._runner, _StaticRunner) else "dynamic"
        info.cuda_graphs = isinstance(self._runner, _StaticRunner) and self._runner.graphs.use_graphs
        info.compiled = isinstance(self._runner, _StaticRunner) and self._runner.compiled
        self._runner.stats = self.stats
        self._runner.observer = self._observe
        self._thread = threading.Thread(target=self._work, name="omega-engine", daemon=True)
        self._thread.start()

    # -- construction

    @classmethod
    def load(cls, config: EngineConfig) -> Engine:
        """Load model + processor, choose attention (flash -> sdpa fallback), warm up with an image."""
        if config.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if config.max_model_length < 2:
            raise ValueError("max_model_length must be >= 2")
        started = time.monotonic()
        path = models.resolve_model_path(config.model_path)
        if models.pick_device(config.device).startswith("cuda"):
            configure_sdpa_kernels()
        gqa_decode.install(config.fast_decode)  # process-wide: the last engine loaded decides
        choice = attention.resolve(
            path,
            requested=config.attn_impl,
            dtype=config.dtype,
            device=config.device,
            warmup=lambda lm: warm_up(lm),
        )
        loaded = choice.loaded
        if config.fast_decode:
            moe_decode.install(loaded.model)
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
            gqa_decode=gqa_decode.installed(),
            experts_implementation=moe_decode.experts_implementation(loaded.model),
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
        return cls(config, loaded, info)

    # -- requests

    def prepare(self, req: GenerationRequest) -> PreparedRequest:
        """Apply the chat template and the processor. Raises InvalidRequestError / PromptTooLongError."""
        images = _validate(req, self.config.max_images_per_request)
        return prepare_inputs(
            self._processor,
            req,
            images,
            max_model_length=self.config.max_model_length,
            lock=self._prep_lock,
        )

    async def stream(self, prepared: PreparedRequest) -> AsyncGenerator[StepOutput, None]:
        """Queue the request and yield its deltas; the last has ``finished=True``.

        Raises QueueFullError (at the first iteration) when the queue is full, EngineDeadError when the
        engine stopped. Closing or cancelling the iterator cancels the generation.
        """
        if not self.alive:
            raise EngineDeadError(self._dead_message())
        queue: asyncio.Queue[Any] = asyncio.Queue()
        seq = _Seq(prepared=prepared, loop=asyncio.get_running_loop(), queue=queue)
        self._submit(seq)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if not seq.done:
                seq.cancelled = True
                with self._cond:
                    self._cond.notify_all()

    def _submit(self, seq: _Seq) -> None:
        with self._cond:
            if not self.alive:
                raise EngineDeadError(self._dead_message())
            if len(self._waiting) >= self.config.max_queue:
                raise QueueFullError(
                    f"the server is busy: {len(self._waiting)} requests are queued (MAX_QUEUE={self.config.max_queue})",
                    retry_after=1.0,
                )
            self._waiting.append(seq)
            self.stats.requests_total += 1
            self.stats.queue_depth = len(self._waiting)
            self._cond.notify_all()

    def generate_sync(self, prepared: PreparedRequest, timeout: float | None = None) -> list[StepOutput]:
        """Run one request to completion from a plain thread (tests, tools); returns all its deltas."""
        items: list[Any] = []
        done = threading.Event()

        def emit(item: Any) -> None:
            items.append(item)
            if isinstance(item, BaseException) or item.finished:
                done.set()

        seq = _Seq(prepared=prepared, loop=None, queue=None, emit=emit)
        self._submit(seq)
        if not done.wait(timeout):
            seq.cancelled = True
            raise TimeoutError("generation did not finish in time")
        if isinstance(items[-1], BaseException):
            raise items[-1]
        return items

    def shutdown(self) -> None:
        """Stop the worker; queued and running requests end with EngineDeadError."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self._die("the engine was shut down")

    # -- worker

    def _observe(self, n: int) -> None:
        if self.batch_observer is not None:
            self.batch_observer(n)

    def _dead_message(self) -> str:
        return f"the engine is not running: {self._dead_reason or 'stopped'}"

    def _die(self, reason: str) -> None:
        with self._cond:
            if self.alive:
                self.alive = False
                self._dead_reason = reason
            pending = list(self._waiting)
            self._waiting.clear()
            self.stats.queue_depth = 0
        err = EngineDeadError(self._dead_message())
        for seq in pending + self._runner.seqs:
            if not seq.done:
                seq.done = True
                seq.send(err)
        self._runner.evict([])
        self.stats.running = 0

    def _work(self) -> None:
        runner = self._runner
        try:
            with torch.inference_mode():
                while True:
                    admitted: list[_Seq] = []
                    with self._cond:
                        while (
                            not self._stopping
                            and not self._waiting
                            and not runner.seqs
                            and self._pending is None
                        ):
                            self._cond.wait()
                        if self._stopping:
                            return
                        free = self.config.max_batch_size - len(runner.seqs)
                        while free > 0 and self._waiting:
                            seq = self._waiting.popleft()
                            if seq.cancelled:
                                seq.done = True
                                continue
                            admitted.append(seq)
                            free -= 1
                        self.stats.queue_depth = len(self._waiting)
                    self._admit_all(admitted)
                    self._drop_finished()
                    if runner.seqs or self._pending is not None:
                        self._step()
                    self.stats.running = len(runner.seqs)
        except Exception as exc:  # a bug or an unrecoverable device error: fail everything, loudly
            log.exception("engine worker crashed")
            self._die(f"worker crashed: {attention.describe_error(exc)}")

    def _admit_all(self, seqs: list[_Seq]) -> None:
        """Prefill newly admitted sequences, in batches where the runner can, and join them."""
        runner = self._runner
        limit = self.config.max_prefill_tokens
        if not runner.batch_prefill or limit <= 0 or len(seqs) < 2:
            for seq in seqs:
                self._admit(seq)
            return
        for group in prefill_groups(seqs, limit):
            if len(group) == 1:
                self._admit(group[0])
                continue
            try:
                for seq in group:
                    self._seed(seq)
                runner.prefill_batch(group)
            except Exception as exc:
                ids = {id(s) for s in group}
                runner.evict([i for i, s in enumerate(runner.seqs) if id(s) not in ids])
                if _fatal(exc):
                    self.stats.errors_total += 1
                    for seq in group:
                        seq.done = True
                        seq.send(EngineDeadError(f"device error: {attention.describe_error(exc)}"))
                    raise
                # one bad request must not fail the others: prefill them one by one
                log.warning(
                    "batched prefill failed (%s); prefilling one by one", attention.describe_error(exc)
                )
                for seq in group:
                    self._admit(seq)
                continue
            for seq in group:
                self._after_token(seq, seq.last_token)

    def _seed(self, seq: _Seq) -> None:
        params = seq.prepared.params
        gen_device = self._runner.device if self._runner.device.type == "cuda" else torch.device("cpu")
        seq.generator = torch.Generator(device=gen_device)
        if params.seed is not None:
            seq.generator.manual_seed(params.seed)
        else:
            seq.generator.seed()

    def _admit(self, seq: _Seq) -> None:
        try:
            self._seed(seq)
            self._runner.prefill(seq)
        except Exception as exc:
            self.stats.errors_total += 1
            self._runner.evict([i for i, s in enumerate(self._runner.seqs) if s is not seq])
            seq.done = True
            if _fatal(exc):
                seq.send(EngineDeadError(f"device error: {attention.describe_error(exc)}"))
                raise
            log.warning("prefill failed: %s", attention.describe_error(exc))
            seq.send(
                EngineError(f"generation failed: {attention.describe_error(exc)}", code="generation_failed")
            )
            return
        self._after_token(seq, seq.last_token)

    def _step(self) -> None:
        """One decode step, pipelined one deep on runners that can (the static slot cache).

        The next step is queued on the device first; then the host reads the previous step's tokens
        (one device->host copy) and does its bookkeeping (detokenization, stop checks, streaming)
        while the device runs the queued step. A sequence that finished at step k still has a row in
        step k+1: that token is dropped, and the row is freed before step k+2.
        """
        runner = self._runner
        pending, self._pending = self._pending, None
        try:
            launched = runner.launch() if runner.seqs else None
            if not runner.pipelined:
                pending, launched = launched, None
            tokens = pending.wait() if pending is not None else []
        except Exception as exc:
            self.stats.errors_total += 1
            seqs = list(runner.seqs)
            runner.evict([])
            if _fatal(exc):
                raise
            log.warning("decode step failed: %s", attention.describe_error(exc))
            for s in seqs:
                s.done = True
                s.send(
                    EngineError(
                        f"generation failed: {attention.describe_error(exc)}", code="generation_failed"
                    )
                )
            return
        self._pending = launched
        if pending is not None:
            for s, t in zip(pending.seqs, tokens, strict=True):
                if not (s.done or s.cancelled):
                    self._after_token(s, t)
        self._drop_finished()

    def _drop_finished(self) -> None:
        runner = self._runner
        keep = [i for i, s in enumerate(runner.seqs) if not (s.done or s.cancelled)]
        for s in runner.seqs:
            if s.cancelled:
                s.done = True
        runner.evict(keep)

    def _after_token(self, seq: _Seq, token: int) -> None:
        """Record a sampled token, detokenize incrementally, check stop conditions, send the delta."""
        params = seq.prepared.params
        seq.token_ids.append(token)
        self.stats.completion_tokens_total += 1
        finish: str | None = None
        eos = token in self._runner.eos_ids and not params.ignore_eos
        if eos:
            finish = "stop"
        else:
            self._detokenize(seq)
            if params.stop:
                finish = self._check_stop(seq)
        if finish is None and len(seq.token_ids) >= params.max_tokens:
            finish = "length"
        if finish is not None:
            if eos or finish == "length":  # a stop-string finish has already cut the text
                self._flush(seq)
                if params.stop and self._check_stop(seq):
                    finish = "stop"
            delta = seq.text[seq.emitted :]
            seq.emitted = len(seq.text)
        else:
            hold = max((len(s) for s in params.stop), default=1) - 1
            upto = max(seq.emitted, len(seq.text) - hold)
            delta = seq.text[seq.emitted : upto]
            seq.emitted = upto
        seq.done = finish is not None
        seq.send(
            StepOutput(
                text=delta,
                token_ids=[token],
                finished=seq.done,
                finish_reason=finish,
                prompt_tokens=seq.prepared.prompt_tokens,
                completion_tokens=len(seq.token_ids),
            )
        )

    def _detokenize(self, seq: _Seq) -> None:
        tok = self._runner.tokenizer
        ids = seq.token_ids
        prefix = tok.decode(ids[seq.prefix_offset : seq.read_offset], skip_special_tokens=True)
        full = tok.decode(ids[seq.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            seq.text += full[len(prefix) :]
            seq.prefix_offset = seq.read_offset
            seq.read_offset = len(ids)

    def _flush(self, seq: _Seq) -> None:
        """At the end, add text still held back waiting for more bytes of a character."""
        ids = seq.token_ids[seq.read_offset :]
        if ids and ids[-1] in self._runner.eos_ids:
            ids = ids[:-1]
        if not ids:
            return
        tok = self._runner.tokenizer
        prefix = tok.decode(seq.token_ids[seq.prefix_offset : seq.read_offset], skip_special_tokens=True)
        full = tok.decode(seq.token_ids[seq.prefix_offset : seq.read_offset] + ids, skip_special_tokens=True)
        seq.text += full[len(prefix) :]
        seq.read_offset = len(seq.token_ids)

    @staticmethod
    def _check_stop(seq: _Seq) -> str | None:
        stops = seq.prepared.params.stop
        longest = max(len(s) for s in stops)
        start = max(0, seq.emitted - longest)
        found = [i for i in (seq.text.find(s, start) for s in stops) if i >= 0]
        if not found:
            return None
        seq.text = seq.text[: min(found)]
        return "stop"


def configure_sdpa_kernels() -> None:
    """Keep PyTorch's cuDNN SDPA kernel out of decoding (process-wide).

    Measured on the H100 (torch 2.11, bench/gpu_profile.py): cuDNN SDPA builds an execution plan for
    every new (batch, KV length) shape, and decoding makes a new shape at every step: 100 ms per
    decode step of the Qwen2.5-VL-7B shape at batch 1 with it, 37 ms with PyTorch's flash /
    memory-efficient SDPA kernels, which need no per-shape plan.
    """
    enable = getattr(torch.backends.cuda, "enable_cudnn_sdp", None)
    if enable is not None:
        enable(False)


def _fatal(exc: BaseException) -> bool:
    """Errors after which the device cannot be trusted (CUDA errors are sticky)."""
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    text = str(exc)
    return "CUDA error" in text or "device-side assert" in text


# --------------------------------------------------------------------------- shared helpers


def prepare_inputs(
    processor: Any,
    req: GenerationRequest,
    images: list[Any],
    *,
    max_model_length: int,
    lock: threading.Lock | None = None,
) -> PreparedRequest:
    """Chat template + processor for one validated request (all processor outputs are kept)."""
    messages = [_normalize_message(m) for m in req.messages]
    try:
        with lock or contextlib.nullcontext():
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
            if images:
                kwargs["images"] = [_rgb(im) for im in images]
            batch = processor(**kwargs)
    except Exception as exc:
        raise InvalidRequestError(
            f"could not process the request: {attention.describe_error(exc)}", param="messages"
        ) from exc
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    prompt_tokens = int(inputs["input_ids"].shape[1])
    max_tokens = req.params.max_tokens
    if prompt_tokens + max_tokens > max_model_length:
        raise PromptTooLongError(
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: {prompt_tokens + max_tokens} "
            f"is more than this model's maximum length (MAX_MODEL_LENGTH={max_model_length})",
            param="max_tokens" if prompt_tokens < max_model_length else "messages",
        )
    return PreparedRequest(
        inputs=inputs, prompt_tokens=prompt_tokens, params=req.params, num_images=len(images)
    )


def _normalize_message(msg: dict[str, Any]) -> dict[str, Any]:
    content = msg["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    return {"role": msg["role"], "content": content}


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
    _warm_runner(_Runner(loaded.model, loaded.processor), loaded)


def _warm_runner(runner: _Runner, loaded: models.LoadedModel) -> None:
    req = warmup_request()
    prepared = prepare_inputs(loaded.processor, req, _validate(req, 8), max_model_length=1 << 30)
    seq = _Seq(prepared=prepared, loop=None, queue=None, emit=lambda item: None)
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
