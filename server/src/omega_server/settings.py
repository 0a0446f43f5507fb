"""Server settings from the environment (DESIGN.md 3.2), validated at start.

`load_settings()` raises `SettingsError` whose message names the offending variable; `__main__`
prints it as one `fatal:` line and exits non-zero.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AttnImpl = Literal["auto", "flash_attention_2", "sdpa", "eager"]
DType = Literal["auto", "bfloat16", "float16", "float32"]


class SettingsError(ValueError):
    """A bad environment value; the message names the variable."""


class Settings(BaseSettings):
    """Environment of the server. Variable names are the field names in upper case."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", protected_namespaces=())

    model_path: str = Field(description="Checkpoint: a local directory, file:///dir or hf://org/name[@rev].")
    served_model_name: str | None = Field(
        default=None, description="OpenAI `model` name; defaults to the checkpoint directory name."
    )
    attn_impl: AttnImpl = Field(default="auto", description="Attention backend to ask for.")
    max_batch_size: int = Field(default=4, ge=1, le=1024, description="Requests per forward pass.")
    max_model_length: int = Field(default=8192, ge=16, description="Prompt plus output tokens, at most.")
    dtype: DType = Field(default="auto", description="Weights dtype; auto = bfloat16 on GPU, float32 on CPU.")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N.")
    compile: bool = Field(
        default=False,
        description="torch.compile the static-cache decode step at start (CUDA + sdpa/eager only): "
        "about 2x the decode speed of the 31B MoE on an H100 at batch 1-4, for 3-8 min more start-up.",
    )
    fast_decode: bool = Field(
        default=True,
        description="One-token attention on the unexpanded key/value heads (split-K Triton kernel on a "
        "GPU) and fused Triton MoE experts at small batch; false keeps transformers' own paths.",
    )
    prefill_chunk_tokens: int = Field(
        default=0,
        ge=0,
        description="Static cache: chunked prefill. A prompt longer than this is prefilled in chunks of "
        "this many tokens, one chunk per engine step between decode steps, so running streams keep "
        "getting tokens while it prefills (a chunk never cuts an image's tokens); 0: one pass per prompt.",
    )
    enable_prefix_caching: bool = Field(
        default=True,
        description="Static cache: keep the keys and values of prefilled prompt blocks (16 tokens, named by "
        "their token ids and the images' content) and prefill only the rest of a prompt that begins with "
        "cached blocks; the same greedy outputs as without it (/health kv.prefix_caching).",
    )
    prefix_cache_tokens: int = Field(
        default=16384,
        ge=0,
        description="Tokens of prompt-prefix KV the prefix cache keeps on the GPU, least recently used "
        "out first; on a GPU at most what the KV memory budget holds beyond the slots (never a slot's "
        "memory; /health kv.prefix_cache_tokens).",
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Ranks (one process per GPU) the model is sharded over by tensor parallelism; "
        "attention and KV heads must divide by it (/health tensor_parallel_size). The intended default "
        "is the visible GPU count when the model does not fit one GPU; today it is 1, and a value "
        "above 1 is refused at load until the multi-rank serving path lands (issue 19).",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Share of the GPU's memory the server may use: the KV slots get what is left of it "
        "after the weights and a profiled prefill; fewer slots than MAX_BATCH_SIZE when they do not fit "
        "(log and /health say so), a fatal kv_cache_too_small error when not one MAX_MODEL_LENGTH "
        "sequence fits.",
    )
    preprocess_workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Requests whose chat template and image processor run at once, each on its own "
        "copy of the processor.",
    )
    host: str = Field(default="0.0.0.0", description="Listen address.")
    port: int = Field(default=8000, ge=0, le=65535, description="Listen port (0 = any free port).")
    api_key: SecretStr | None = Field(
        default=None, description="When set, /v1/* needs `Authorization: Bearer`."
    )
    shutdown_timeout: int = Field(
        default=10,
        ge=0,
        description=(
            "Seconds SIGTERM lets in-flight requests (streams included) finish before closing them; "
            "new connections are refused at once. The operator sets it from the pod's grace period."
        ),
    )
    http_keep_alive_seconds: int = Field(
        default=75,
        ge=1,
        description=(
            "Seconds an idle keep-alive connection stays open. Longer than a client's pool keeps idle "
            "connections (httpx 5 s) and than a load balancer's idle timeout (60 s on many), so the server "
            "never closes a connection just as the client sends on it (the client sees a dropped request)."
        ),
    )
    max_queue: int = Field(default=64, ge=1, description="Requests waiting for the engine before 429.")
    default_max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="max_tokens when a request gives none (capped by the room left); unset: the room "
        "left in MAX_MODEL_LENGTH after the prompt.",
    )
    max_images_per_request: int = Field(default=8, ge=0, description="Image parts allowed in one request.")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Largest encoded image, bytes.")
    max_image_pixels: int = Field(
        default=1280 * 28 * 28,
        ge=1,
        description="Pixel budget of one image: a larger image is downscaled to it, keeping its aspect "
        "ratio (default: about 1280 visual tokens on Qwen-VL, the max_pixels its model cards suggest; a "
        "12 MP photo would otherwise be about 15k tokens). detail: low uses at most 512x512.",
    )
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="Largest request body.")
    allow_image_urls: bool = Field(default=True, description="Fetch http(s) image URLs.")
    allow_private_image_urls: bool = Field(
        default=False,
        description="Also fetch image URLs whose host resolves to a loopback, private (RFC 1918, ULA), "
        "link-local (cloud metadata), multicast, unspecified or reserved address; false refuses them "
        "with a 400 (every resolved address and every redirect hop is checked).",
    )
    image_fetch_timeout: float = Field(default=10.0, gt=0, description="Seconds to fetch one image URL.")
    worker_stall_seconds: float = Field(
        default=300.0,
        gt=0,
        description="/live answers 503 when the engine's worker has made no progress for this many "
        "seconds while requests are waiting or running (a stuck step), so the kubelet restarts it.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(default="info")

    @field_validator("model_path")
    @classmethod
    def _model_path(cls, value: str) -> str:
        # Resolving the path (file://, hf:// downloads) is the model loader's job; it names MODEL_PATH too.
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("served_model_name", "api_key", "default_max_tokens", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("dtype", "attn_impl", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def model_name(self) -> str:
        """The served model name: SERVED_MODEL_NAME, else the checkpoint's last path component."""
        if self.served_model_name:
            return self.served_model_name
        tail = self.model_path.rstrip("/").split("@")[0].rsplit("/", 1)[-1]
        return tail or "model"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `env` (default: the process environment); `SettingsError` names the variable."""
    source = dict(os.environ if env is None else env)
    fields = Settings.model_fields
    values = {name: source[key] for key in source if (name := key.lower()) in fields}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            var = str(err["loc"][0]).upper() if err["loc"] else "environment"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                problems.append(f"{var} is required but not set")
            else:
                shown = err.get("input")
                problems.append(f"{var}={shown!r}: {msg}" if isinstance(shown, str) else f"{var}: {msg}")
        raise SettingsError("invalid environment: " + "; ".join(problems)) from None
