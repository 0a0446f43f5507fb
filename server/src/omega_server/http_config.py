"""``HttpConfig``: the HTTP layer's share of the settings, made once from them by ``app.http_config``.

Below ``app`` no module sees the whole ``Settings``: the engine gets an ``EngineConfig``, and the
state, the routes and the chat service get this.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from omega_server.images import ImageLimits


@dataclass(frozen=True)
class HttpConfig:
    """What the routes, the chat service and /health need to know."""

    model_name: str  # the served model name (OpenAI ``model``)
    attn_impl: str  # the attention backend asked for (reported before the engine has loaded)
    max_batch_size: int
    max_model_length: int
    default_max_tokens: int | None  # max_tokens when a request gives none (capped by the room left);
    # None: the room left in max_model_length after the prompt
    max_images_per_request: int
    api_key: SecretStr | None  # when set, /v1/* needs ``Authorization: Bearer``
    images: ImageLimits
    worker_stall_seconds: float = 300.0  # /live is 503 after this long without engine progress under work
