"""The engine's public data types: requests, sampling parameters, outputs, config, info and stats.

No torch at import: the HTTP layer builds requests and reads outputs, info and stats from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from omega_server.engine.kv_budget import DeviceMemory


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling. ``temperature`` at or below ``sampler.SAMPLING_EPS`` is greedy decoding.

    The neutral value of each field turns it off (``top_k`` 0, ``min_p`` 0, penalties 0 or 1); the
    order in which the sampler applies them is in ``engine.sampler``'s docstring.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    top_k: int = 0  # keep the k most likely tokens; 0 (or -1) keeps all
    min_p: float = 0.0  # drop tokens below min_p x the most likely token's probability
    repetition_penalty: float = 1.0  # HF's: logits of prompt and output tokens divided (or times)
    presence_penalty: float = 0.0  # OpenAI's: minus this for every token already in the output
    frequency_penalty: float = 0.0  # OpenAI's: minus this times the token's count in the output
    stop_token_ids: tuple[int, ...] = ()  # these tokens end the sequence like EOS (not in the text)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: bool = False  # report the chosen token's log-probability
    top_logprobs: int = 0  # and the most likely tokens' at each position (needs logprobs)
    # structured output: ("json_schema", the schema as JSON), see ``engine.grammar``; None: free text
    grammar: tuple[str, str] | None = None


@dataclass
class GenerationRequest:
    """A chat in HF format: ``{"role", "content": [{"type": "text", "text"} | {"type": "image", "image": PIL}]}``."""

    messages: list[dict[str, Any]]
    params: SamplingParams


@dataclass
class PreparedRequest:
    """Model inputs (on CPU) for one request, made by ``Engine.prepare``."""

    inputs: dict[str, torch.Tensor]
    prompt_tokens: int
    params: SamplingParams
    constraint: Any = None  # structured output: the compiled grammar (``engine.grammar.Constraint``)
    prefix_key: Any = None  # prefix caching: the prompt's block hashes (``engine.prefix_cache.PromptKey``)


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log-probability (the model's distribution) and the top alternatives'.

    ``token`` is the text this token completed (the entries of a sequence join to its text); an
    alternative's text is its own decoding.
    """

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token id, text, log-probability), likeliest first


@dataclass
class StepOutput:
    """One streamed delta. The last item of a stream has ``finished=True`` and a ``finish_reason``."""

    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None  # one per token of ``token_ids`` when asked for


@dataclass
class EngineConfig:
    """Engine settings (the server maps its environment onto these: ``app.engine_config``)."""

    model_path: str
    attn_impl: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 4
    max_model_length: int = 8192
    max_queue: int = 64
    device: str = "auto"
    served_model_name: str | None = None
    max_images_per_request: int = 8
    # "dynamic" (DynamicCache, any backend), "static" (slot cache; sdpa, eager, flash_attention_2) or
    # "auto" (static with CUDA graphs on a GPU with those backends, dynamic otherwise)
    kv_cache: str = "auto"
    cuda_graphs: bool = True  # replay static-cache decode steps as CUDA graphs (GPU only)
    # static cache: waiting requests are prefilled together, up to this many (padded) prompt tokens
    # per forward pass; 0 prefills one request at a time
    max_prefill_tokens: int = 8192
    # static cache: chunked prefill. A prompt longer than this many tokens is prefilled in chunks of
    # it, one chunk per engine step between decode steps (the running streams keep getting tokens);
    # a chunk never cuts the image tokens (it takes them all). 0: every prompt in one pass
    prefill_chunk_tokens: int = 0
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
    # (``kernels.gqa_decode``), and on a GPU with Triton the fused experts for MoE layers at small
    # batch (``kernels.moe_decode``); False keeps transformers' own paths
    fast_decode: bool = True
    # static cache: the share of the device's memory the server may use; the KV slots get what is
    # left of it after the weights and a profiled prefill (``kv_budget``)
    gpu_memory_utilization: float = 0.9
    # requests whose chat template and processor run at once (each on its own processor copy)
    preprocess_workers: int = 2
    # tests and CPU runs: ``probe(profile) -> kv_budget.DeviceMemory`` in place of the device's own
    # numbers (``kv_budget.measure_cuda``); on the CPU without one the slots are not sized from memory
    memory_probe: Callable[[Callable[[], None]], DeviceMemory] | None = None
    # static cache: keep prefilled prompt blocks' KV on the device and prefill only the uncached rest
    # of a prompt that shares leading blocks with an earlier one (``engine.prefix_cache``)
    prefix_caching: bool = True
    # tokens of prefix KV kept (sized from memory: at most what the KV budget holds beyond the slots)
    prefix_cache_tokens: int = 16384
    # ranks the model is sharded over (``engine.tensor_parallel``); 1: one device, no sharding
    tensor_parallel_size: int = 1


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
    # flash_attention_2 on the slot cache: the flash-attn kernels in use (kernels.flash_decode.KERNELS)
    flash_kernels: list[str] | None = None
    # the static cache's KV slots (``kv_budget``): 0 on the dynamic cache
    kv_slots: int = 0
    kv_token_capacity: int = 0  # kv_slots x max_model_length
    kv_sized_from_memory: bool = False  # the slot count came from the device's free memory
    kv_budget_bytes: int = 0  # memory granted to the KV cache (0 when not sized from memory)
    # the checkpoint's generation_config values for unset request fields (``load.sampling_defaults``)
    sampling_defaults: dict[str, float] = field(default_factory=dict)
    prefix_caching: bool = False  # prompt prefixes' KV is reused (static cache with ENABLE_PREFIX_CACHING)
    prefix_cache_tokens: int = 0  # tokens of prefix KV the prefix cache keeps (0 when off)
    tensor_parallel_size: int = 1  # ranks the model is sharded over (``engine.tensor_parallel``)


@dataclass
class EngineStats:
    """Counters (read without locking; ints are updated by the worker thread)."""

    forward_passes: int = 0
    requests_batched_total: int = 0  # requests that shared at least one forward pass with another
    max_batch_seen: int = 0
    queue_depth: int = 0
    running: int = 0
    kv_tokens: int = 0  # tokens in the KV cache rows of the running sequences
    prefill_passes: int = 0
    prefill_tokens: int = 0  # prompt tokens (padding included) run through prefill passes
    decode_passes: int = 0
    requests_total: int = 0
    completion_tokens_total: int = 0
    errors_total: int = 0
    prefix_cache_queries: int = 0  # prefills that looked up the prefix cache
    prefix_cache_hits: int = 0  # of them, prefilled from cached prefix blocks
    prefix_cache_hit_tokens: int = 0  # prompt tokens taken from the prefix cache, not recomputed
