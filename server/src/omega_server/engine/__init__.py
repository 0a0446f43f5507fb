"""The generation engine (no FastAPI here): its public names, without importing torch until ``Engine``.

The package, by job (see each module's docstring):

- ``types``: requests, sampling parameters, outputs, config, info, stats (no torch)
- ``errors``: the typed errors, fatal-error classification, ``describe_error`` (no torch)
- ``inputs``: the engine API's request check, chat template + processor, prefill collation
- ``sampler``: one token per sequence for the whole batch (``SAMPLING_EPS``)
- ``detok``: incremental text and stop strings (``IncrementalText``)
- ``sequence``: one request in flight (``Seq``) and the way back to its caller
- ``runner`` (dynamic cache) and ``static_runner`` (slots, CUDA graphs, compile, pipelining),
  over ``kvslots``
- ``core``: the ``Engine``: queue, admission, the decode loop, the failure path, death
- ``load``: loading, the decode kernels, runner choice, warm-ups

``omega_server.engine.types`` and ``.errors`` import without torch, and so does this package:
``Engine`` is imported from ``core`` when it is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omega_server.engine.errors import (
    EngineDeadError,
    EngineError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
)
from omega_server.engine.types import (
    EngineConfig,
    EngineInfo,
    EngineStats,
    GenerationRequest,
    PreparedRequest,
    SamplingParams,
    StepOutput,
)

if TYPE_CHECKING:
    from omega_server.engine.core import Engine

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


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from omega_server.engine.core import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
