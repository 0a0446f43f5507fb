"""``spec.fallback`` of the OmegaVLM (part of the CRD schema, with :mod:`omega_operator.api.models`).

Kept in its own module so the fallback's knobs grow without touching the rest of the spec.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from omega_operator.api import defaults as d


class FallbackSpec(BaseModel):
    """Automatic rollback from the flash variant to the sdpa variant."""

    # The same config as every spec object (``models._Model``: camelCase names, closed objects);
    # tests/omega_operator/test_api.py checks they agree.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False)

    enabled: bool | None = Field(
        default=None,
        description=(
            "Roll back to the sdpa variant when flash-attn fails to load or the flash variant "
            f"crash-loops. {d.describe(d.DEFAULT_FALLBACK_ENABLED)} When false the OmegaVLM turns Degraded instead."
        ),
    )
    crash_loop_restarts: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "Container restarts of a flash-variant pod that count as a failed flash load: restarts of a "
            "pod that has not been Ready on flash since it started, all inside crashLoopWindowSeconds, "
            "and none with another known cause (OOMKilled, out of GPU memory, image pull, a model that "
            "fails to load). " + d.describe(d.DEFAULT_CRASH_LOOP_RESTARTS)
        ),
    )
    crash_loop_window_seconds: int | None = Field(
        default=None,
        ge=30,
        le=86400,
        description=(
            "The window, from the pod's start, inside which crashLoopRestarts restarts count as a failed "
            "flash load; a pod that ran longer (it served, then restarted: a liveness kill, an Xid, a node "
            "reboot) is not flash evidence. Make it longer than crashLoopRestarts model loads plus the "
            "kubelet's back-off. " + d.describe(d.DEFAULT_CRASH_LOOP_WINDOW_SECONDS)
        ),
    )
