"""The defaults of the optional OmegaVLM spec fields, written once. Pure.

The CRD carries no schema default (it would rewrite stored objects): each field's description in
:mod:`omega_operator.api.models` names its default from here (:func:`describe`), and
:mod:`omega_operator.builders` applies them from here.
"""

from __future__ import annotations

DEFAULT_REPLICAS = 1
DEFAULT_ATTENTION = "auto"
DEFAULT_PULL_POLICY = "IfNotPresent"
DEFAULT_FALLBACK_ENABLED = True
DEFAULT_CRASH_LOOP_RESTARTS = 3
DEFAULT_CRASH_LOOP_WINDOW_SECONDS = 600
DEFAULT_MAX_BATCH_SIZE = 4
DEFAULT_MAX_MODEL_LENGTH = 8192
DEFAULT_DTYPE = "bfloat16"
DEFAULT_SHM_SIZE = "16Gi"
DEFAULT_STARTUP_TIMEOUT = 1800
DEFAULT_GPU_COUNT = 1
DEFAULT_SERVICE_TYPE = "ClusterIP"
DEFAULT_SERVICE_PORT = 8000
DEFAULT_TERMINATION_GRACE = 120


def describe(value: object) -> str:
    """How a description names a default: ``Default: 4.`` (booleans as YAML writes them, lists joined)."""
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, list | tuple):
        shown = ", ".join(str(v) for v in value)
    else:
        shown = str(value)
    return f"Default: {shown}."
