"""The flash -> sdpa fallback decision (DESIGN.md 3.3, issue 5): its rules, and its public names.

Pure: no I/O, no clock (``now`` comes in), no globals. The parts: :mod:`.inputs` (the spec view and
the pod view), :mod:`.findings` (the one classifier of pod trouble), :mod:`.decision` (the decision).

Inputs: the spec's few relevant fields (:class:`FallbackSpec`), the current ``status.attention`` (a
mapping in the CR's camelCase shape), the OmegaVLM's annotations, the pods (:class:`PodView`, read
from pod objects) and their /health probe results (:class:`omega_operator.health_report.ProbeResult`).
Output: a :class:`Decision` that says which attention the Deployment must be built with, what goes
into ``status.attention`` and the ``FlashAttentionDegraded`` condition, and why.

Rules
-----
* Only pods of the flash variant for the *current* flash image count as flash evidence (pods being
  deleted, sdpa pods and pods of an older flash image are ignored for the decision).
* Flash failure, reason ``FlashAttentionLoadFailed``: the pod's /health (200 or 503, the body always
  comes) has ``attn_requested`` flash (``flash_attention_2`` or ``auto``) and ``flash_attn.loaded``
  false with an error of a flash kind (``flash_attn.error_kind`` in ``FLASH_ERROR_KINDS``, or no
  kind from an older server), or it is ready on another backend. A pod still loading (503, no error
  yet) or unreachable is not evidence: we wait.
* Flash failure, reason ``FlashVariantCrashLoop``: a flash pod's container terminated with a fatal
  line whose ``flash_attn.error_kind`` is a flash kind, or that names flash-attn (at once: the server
  said why), or its restarts reached ``fallback.crashLoopRestarts`` while it is not Ready on flash,
  all inside ``fallback.crashLoopWindowSeconds`` of the pod's start, without a known non-flash cause.
* Never a flash failure: ``error_kind`` ``out_of_memory`` (reason ``OutOfMemory``, also the Ready
  reason of a pod serving sdpa in process after it) or ``other`` (``FlashAttemptFailed``), OOMKilled,
  image pull errors, Unschedulable, a model that fails to load, crash loops below the threshold or
  slower than the window. Each shows as a :class:`PodFinding` with its own reason.
* Per-node memory (:mod:`.nodes`): a flash failure of a node-scoped kind (``import_error``,
  ``unsupported_device``, ``kernel_error``) lists its node in ``status.attention.badNodes``
  (``Action.EXCLUDE``: the flash pods get a required node affinity ``kubernetes.io/hostname NotIn``,
  a Warning Event ``FlashAttentionNodeExcluded`` per new node, ``FlashAttentionDegraded=True``
  ``FlashAttentionNodeFailed``) instead of moving the fleet. The fleet rolls back when no pod runs
  flash on an unlisted node and either two nodes are listed or a flash pod kept off them cannot be
  scheduled. ``not_installed`` and unclassified failures roll the fleet back at once. The list is
  for the current flash image only, and the retry annotation clears it.
* ``fallback.enabled: false``: a flash failure gives ``Action.DEGRADED`` (no rollback).
* Sticky: once ``status.attention.fallback`` exists with ``fromImage`` = the current flash image and
  ``attention`` = the spec's attention, the Deployment stays on sdpa. It is cleared (flash tried
  again) when the flash image or the spec's attention changes, or on the retry annotation.
* Retry annotation ``vlm.omega.io/retry-flash``: its value is compared with
  ``status.attention.retryFlash`` (the last value consumed). A new non-empty value is consumed once:
  it is recorded there and, when a fallback is active, the fallback is cleared so the flash variant
  is tried again. The same value never retries twice; set a new one (for example a timestamp:
  ``kubectl annotate ovlm NAME vlm.omega.io/retry-flash="$(date +%s)" --overwrite``) to retry again.
  A value set while no fallback is active is consumed too, so it cannot trigger a later retry.
* Everything the decision depends on lives in the status, so it survives an operator restart.
"""

from omega_operator.fallback.decision import (
    EVENT_REASON,
    RETRY_ANNOTATION,
    SDPA,
    Action,
    AttentionSummary,
    Decision,
    FallbackRecord,
    FlashErrorSummary,
    decide,
)
from omega_operator.fallback.findings import FLASH_REASONS, PodFinding, Reason
from omega_operator.fallback.inputs import FallbackSpec, PodView, Termination, fallback_spec

__all__ = [
    "EVENT_REASON",
    "FLASH_REASONS",
    "RETRY_ANNOTATION",
    "SDPA",
    "Action",
    "AttentionSummary",
    "Decision",
    "FallbackRecord",
    "FallbackSpec",
    "FlashErrorSummary",
    "PodFinding",
    "PodView",
    "Reason",
    "Termination",
    "decide",
    "fallback_spec",
]
