"""The engine's typed errors, which of them leave the device untrustworthy, and their one-line form.

No torch at import: the HTTP layer maps these errors to status codes (``omega_server.errors``).
"""

from __future__ import annotations

import sys
from typing import Any


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


class OutOfMemoryError(EngineError):
    """The device ran out of memory for this request; the engine goes on (HTTP 503 with Retry-After)."""

    default_code = "out_of_memory"

    def __init__(self, message: str, *, retry_after: float = 2.0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class EngineDeadError(EngineError):
    """The engine stopped (shut down or an unrecoverable device error) (HTTP 503)."""

    default_code = "engine_dead"


class StartupError(Exception):
    """A fatal start-up error whose ``kind`` the operator reads as its own reason (``fatal: kind: ...``)."""

    kind = "startup_failed"


class KVCacheTooSmallError(StartupError):
    """Not even one sequence of MAX_MODEL_LENGTH tokens fits in the device memory left for the KV cache."""

    kind = "kv_cache_too_small"


class ContextTooLongError(StartupError):
    """MAX_MODEL_LENGTH is more than the model's positions (``max_position_embeddings``)."""

    kind = "max_model_length_too_large"


def describe_error(exc: BaseException) -> str:
    """``"ImportError: message"``, first line only, bounded, for /health and logs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out[:500]


def is_fatal(exc: BaseException) -> bool:
    """Errors after which the device cannot be trusted (CUDA errors are sticky)."""
    torch = sys.modules.get("torch")  # an error from the device means torch is loaded
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    text = str(exc)
    return "CUDA error" in text or "device-side assert" in text
