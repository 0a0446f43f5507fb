"""How a server pod stops: the grace period that lets in-flight streams finish (part of the spec).

At deletion the kubelet runs the preStop hook (a short sleep, so endpoints, kube-proxy and load
balancers drop the pod before it stops listening), then SIGTERM: the server stops accepting
connections and lets in-flight requests, streams included, finish for SHUTDOWN_TIMEOUT (the
grace period less the hook and a margin) before it closes them; SIGKILL comes at the end.
"""

from __future__ import annotations

from pydantic import Field

from omega_operator.api import defaults as d
from omega_operator.api.base import ApiModel

# Seconds the preStop hook waits before SIGTERM, and the margin kept before the kubelet's SIGKILL.
PRESTOP_DELAY = 5
SHUTDOWN_MARGIN = 5
MIN_GRACE = PRESTOP_DELAY + SHUTDOWN_MARGIN


class PodLifecycle(ApiModel):
    """Shutdown fields of the server pods (part of OmegaVLMSpec)."""

    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=MIN_GRACE,
        le=86400,
        description=(
            "Seconds a server pod has to stop at deletion (rollouts, rollbacks, scale-down, drains): "
            f"a {PRESTOP_DELAY} s preStop hook, then SIGTERM; in-flight streams finish for the rest "
            f"less {SHUTDOWN_MARGIN} s (SHUTDOWN_TIMEOUT). Set it above the longest stream you serve. "
            + d.describe(d.DEFAULT_TERMINATION_GRACE)
        ),
    )


def shutdown_timeout(grace: int) -> int:
    """SHUTDOWN_TIMEOUT of the server for a grace period: what is left after the hook and the margin."""
    return max(0, grace - PRESTOP_DELAY - SHUTDOWN_MARGIN)
