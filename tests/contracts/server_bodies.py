"""``GET /health`` bodies built by the server's own code (``omega_server.health.health_body``).

Tests of the operator take their /health bodies from here, so a change of the server's body is a
change of what the operator's tests read: there is no hand-written copy of the contract.
"""

from __future__ import annotations

from typing import Any

from omega_server import flash_failure
from omega_server.app import http_config
from omega_server.engine.types import EngineInfo
from omega_server.health import Phase, health_body
from omega_server.settings import Settings

FLASH_IMPORT_ERROR = "ImportError: FlashAttention2 has been toggled on, but it cannot be used"


def server_config(attn_impl: str = "flash_attention_2") -> Any:
    """The HTTP layer's config for a server started with ``ATTN_IMPL=attn_impl`` (app.http_config)."""
    return http_config(
        Settings(model_path="/models/omega-17", served_model_name="omega-17-vl-exp", attn_impl=attn_impl)
    )


def engine_info(
    *,
    attn: str = "sdpa",
    requested: str = "flash_attention_2",
    flash_error: str | None = FLASH_IMPORT_ERROR,
    flash_kind: str | None = None,
) -> EngineInfo:
    """What a loaded engine reports: ``attn`` in use after asking for ``requested``. ``flash_kind``:
    the error's kind (default: the server's own ``flash_failure.classify`` of ``flash_error``)."""
    loaded = attn == "flash_attention_2"
    if flash_kind is None and flash_error is not None and not loaded:
        flash_kind = flash_failure.classify(None, flash_error, installed=False)
    return EngineInfo(
        attn=attn,
        attn_requested=requested,
        flash_attn={
            "available": loaded,
            "loaded": loaded,
            "version": "2.8.3.post2" if loaded else None,
            "error": None if loaded else flash_error,
            "error_kind": None if loaded else flash_kind,
        },
        dtype="torch.bfloat16",
        devices=["cuda:0"],
        device_names=["NVIDIA H100 80GB HBM3"],
        model_type="omega17_vl_exp",
        max_batch_size=4,
        max_model_length=8192,
        served_model_name="omega-17-vl-exp",
        kv_cache="static",
        cuda_graphs=True,
        kv_slots=4,
        kv_token_capacity=4 * 8192,
        kv_sized_from_memory=True,
        kv_budget_bytes=40 << 30,
        gqa_decode=attn == "sdpa",
    )


def body(
    phase: Phase, info: EngineInfo | None = None, error: str | None = None, **config: Any
) -> dict[str, Any]:
    """The server's /health body in ``phase``."""
    return health_body(phase, info, server_config(**config), error)


#: a ready server whose flash-attn failed to load: it fell back to sdpa in process
READY_BODY: dict[str, Any] = body("ready", engine_info())
#: a ready server whose flash warm-up ran out of GPU memory: it serves sdpa in process
OOM_ERROR = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
OOM_BODY: dict[str, Any] = body("ready", engine_info(flash_error=OOM_ERROR))
#: a ready server running flash-attn 2
FLASH_BODY: dict[str, Any] = body("ready", engine_info(attn="flash_attention_2"))
#: a server still loading: what it does not know yet is null
LOADING_BODY: dict[str, Any] = body("loading")
#: a server whose model failed to load
FAILED_BODY: dict[str, Any] = body(
    "failed", error="could not load the model from MODEL_PATH=/models: OSError"
)
#: a server whose engine stopped
DEAD_BODY: dict[str, Any] = body("dead", engine_info(), error="worker crashed: RuntimeError: CUDA error")
