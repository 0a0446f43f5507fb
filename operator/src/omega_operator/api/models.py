"""The OmegaVLM custom resource as pydantic models: the single source of the CRD schema.

Field names are snake_case in Python and camelCase in Kubernetes (aliases). No field carries a
schema default (a default in the CRD would rewrite stored objects); the defaults are the
``DEFAULT_*`` constants of :mod:`omega_operator.api.defaults`, written once: each description
here names its default from them and :mod:`omega_operator.builders` applies them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field

from omega_operator.api import defaults as d
from omega_operator.api.base import ApiModel as _Model
from omega_operator.api.base import Quantity
from omega_operator.api.base import open_object as _open_object
from omega_operator.api.cache import ModelCache
from omega_operator.api.fallback_spec import FallbackSpec
from omega_operator.api.lifecycle import PodLifecycle
from omega_operator.api.placement import GpuSpec, PodScheduling

GROUP = "vlm.omega.io"
VERSION = "v1alpha1"
KIND = "OmegaVLM"
PLURAL = "omegavlms"
SINGULAR = "omegavlm"
SHORT_NAMES = ["ovlm"]
CATEGORIES = ["omega"]
API_VERSION = f"{GROUP}/{VERSION}"

# pvc://claim[/path] | hf://org/name[@rev] | file:///absolute/path
URI_PATTERN = (
    r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?"
    r"|hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(@[-A-Za-z0-9_./]+)?"
    r"|file:///[^\s]*)$"
)
URI_RE = re.compile(URI_PATTERN)

# Environment variables the operator derives from the spec; the user may not set them in spec.env.
RESERVED_ENV = (
    "ATTN_IMPL",
    "MAX_BATCH_SIZE",
    "MAX_MODEL_LENGTH",
    "DTYPE",
    "MODEL_PATH",
    "SERVED_MODEL_NAME",
    "PORT",
    "SHUTDOWN_TIMEOUT",
    "HF_HOME",
    "HF_HUB_OFFLINE",
)

Attention = Literal["auto", "flash_attention_2", "sdpa"]
Variant = Literal["flash", "sdpa"]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]
Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]


class ModelSource(_Model):
    """Which model to serve and where its weights are."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.:/]*$",
        description="Served model name: the OpenAI `model` field clients send (SERVED_MODEL_NAME).",
    )
    uri: str = Field(
        max_length=2048,
        pattern=URI_PATTERN,
        description=(
            "Where the weights are: `pvc://claim/path` (the claim is mounted read-only and MODEL_PATH "
            "points into it; with replicas on several nodes it must be ReadOnlyMany or ReadWriteMany), "
            "`hf://org/name[@revision]` (downloaded once into spec.model.cache by the pod's "
            "model-download init container, before the startup probe; without a cache into an "
            "emptyDir at every pod start) or `file:///path` (a path inside the server image; nothing "
            "is mounted for it). Passed to the server as MODEL_PATH."
        ),
    )
    cache: ModelCache | None = Field(
        default=None,
        description=(
            "Where hf:// weights are kept for every pod, both image variants and rollbacks: an "
            "existing claim (claimName) or one the operator creates (size, storageClass, accessMode). "
            "Only with an hf:// uri. Without it each pod downloads into an emptyDir at every start."
        ),
    )


class ImageSpec(_Model):
    """The inference-server image. Two variants exist: `flash` (flash-attn 2) and `sdpa` (PyTorch SDPA)."""

    repository: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^[^\s:@]+(:[0-9]+)?(/[^\s:@]+)*$",
        description="Image repository without tag, for example registry.example.com/omega-vlm-server.",
    )
    tag: str | None = Field(
        default=None,
        min_length=1,
        max_length=120,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description=(
            "Base tag. The variants are `<repository>:<tag>-flash` and `<repository>:<tag>-sdpa`. "
            "Required unless flashImage and sdpaImage are both given (sdpaImage alone for attention sdpa)."
        ),
    )
    flash_image: str | None = Field(
        default=None,
        min_length=1,
        max_length=640,
        description="Full image reference of the flash variant; overrides `<repository>:<tag>-flash`.",
    )
    sdpa_image: str | None = Field(
        default=None,
        min_length=1,
        max_length=640,
        description="Full image reference of the sdpa variant; overrides `<repository>:<tag>-sdpa`.",
    )
    pull_policy: PullPolicy | None = Field(
        default=None,
        description=f"Image pull policy of the server container. {d.describe(d.DEFAULT_PULL_POLICY)}",
    )


class RuntimeSpec(_Model):
    """Inference-server runtime knobs."""

    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=f"Requests per forward pass (MAX_BATCH_SIZE). {d.describe(d.DEFAULT_MAX_BATCH_SIZE)}",
    )
    max_model_length: int | None = Field(
        default=None,
        ge=256,
        le=1048576,
        description=f"Longest prompt plus output in tokens (MAX_MODEL_LENGTH). {d.describe(d.DEFAULT_MAX_MODEL_LENGTH)}",
    )
    dtype: Dtype | None = Field(
        default=None, description=f"Weight and activation dtype (DTYPE). {d.describe(d.DEFAULT_DTYPE)}"
    )
    shm_size: Quantity | None = Field(
        default=None,
        description=f"Size limit of the memory-backed /dev/shm volume. {d.describe(d.DEFAULT_SHM_SIZE)}",
    )
    startup_timeout_seconds: int | None = Field(
        default=None,
        ge=60,
        le=86400,
        description=(
            "How long a pod may take to load the model before the kubelet restarts it (startup probe "
            f"on /health). {d.describe(d.DEFAULT_STARTUP_TIMEOUT)}"
        ),
    )


class ServiceSpec(_Model):
    """The Service in front of the pods."""

    type: ServiceType | None = Field(
        default=None, description=f"Service type. {d.describe(d.DEFAULT_SERVICE_TYPE)}"
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description=f"Service port. {d.describe(d.DEFAULT_SERVICE_PORT)}"
    )


class ResourceRequirements(_Model):
    """Compute resources of the server container (nvidia.com/gpu comes from spec.gpu.count)."""

    limits: dict[str, Quantity] | None = Field(
        default=None, max_length=32, description="Resource limits, e.g. cpu, memory."
    )
    requests: dict[str, Quantity] | None = Field(
        default=None, max_length=32, description="Resource requests, e.g. cpu, memory."
    )


class EnvVar(_Model):
    """An extra environment variable of the server container (Kubernetes EnvVar)."""

    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", description="Variable name."
    )
    value: str | None = Field(default=None, description="Literal value.")
    value_from: Annotated[
        dict[str, Any] | None, _open_object("Source of the value (Kubernetes EnvVarSource).")
    ] = None


class Toleration(_Model):
    """A Kubernetes toleration."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value to match (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


class LocalObjectReference(_Model):
    """A reference to an object in the same namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the referenced object.")


class OmegaVLMSpec(PodScheduling, PodLifecycle, _Model):
    """Desired state of an OmegaVLM: a VLM inference server on NVIDIA Hopper GPU nodes."""

    model: ModelSource = Field(description="The model to serve.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            f"Number of server pods. {d.describe(d.DEFAULT_REPLICAS)} Also written through the scale "
            "subresource (`kubectl scale`, a HorizontalPodAutoscaler, KEDA): the operator follows it."
        ),
    )
    image: ImageSpec = Field(description="The inference-server image and its variants.")
    attention: Attention | None = Field(
        default=None,
        description=(
            "Attention backend: `auto` (flash variant first, sdpa fallback), `flash_attention_2` "
            f"(flash variant, ATTN_IMPL=flash_attention_2) or `sdpa`. {d.describe(d.DEFAULT_ATTENTION)}"
        ),
    )
    fallback: FallbackSpec | None = Field(default=None, description="Automatic rollback to the sdpa variant.")
    runtime: RuntimeSpec | None = Field(default=None, description="Inference-server runtime knobs.")
    gpu: GpuSpec | None = Field(default=None, description="GPUs per pod and the GPU nodes they may run on.")
    service: ServiceSpec | None = Field(default=None, description="The Service in front of the pods.")
    resources: ResourceRequirements | None = Field(
        default=None, description="Extra compute resources (cpu, memory) of the server container."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, max_length=64, description="Extra node selector, ANDed with the GPU product affinity."
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        max_length=64,
        description="Extra tolerations (the nvidia.com/gpu toleration is always added).",
    )
    affinity: Annotated[
        dict[str, Any] | None,
        _open_object("Extra affinity (Kubernetes Affinity), merged with the GPU product node affinity."),
    ] = None
    # Bounded lists and maps keep the CEL rules' estimated cost within the API server's budget.
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=256,
        description="Extra environment variables. Variables the operator sets (ATTN_IMPL, ...) are refused.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    env_from: (
        list[Annotated[dict[str, Any], _open_object("A Kubernetes EnvFromSource (configMapRef/secretRef).")]]
        | None
    ) = Field(default=None, max_length=64, description="Extra environment from ConfigMaps or Secrets.")
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, max_length=16, description="Secrets for pulling the server image."
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        description="Service account of the server pods. Its token is not mounted"
        " (automountServiceAccountToken: false): the server never calls the API server.",
    )
    pod_annotations: dict[str, str] | None = Field(
        default=None, description="Extra annotations on the server pods."
    )


class FallbackRecord(_Model):
    """Why and when the operator rolled the deployment back to the sdpa variant (sticky)."""

    at: str = Field(description="When the rollback happened (RFC 3339).")
    from_image: str = Field(description="The flash image that failed.")
    to_image: str | None = Field(default=None, description="The sdpa image rolled back to.")
    reason: str = Field(description="FlashAttentionLoadFailed or FlashVariantCrashLoop.")
    message: str | None = Field(default=None, description="The pod's own error message.")
    pod: str | None = Field(default=None, description="The pod that reported the failure.")
    node: str | None = Field(default=None, description="The node of that pod.")
    attention: str | None = Field(
        default=None, description="spec.attention when it happened; a change of it retries flash."
    )


class FlashError(_Model):
    """One distinct flash-attn error and the pods that reported it."""

    message: str = Field(description="The error as the pods report it.")
    pods: list[str] | None = Field(default=None, description="Pods that reported it.")
    count: int | None = Field(default=None, description="How many pods reported it.")


class BadNode(_Model):
    """A node flash-attn failed on while it works elsewhere: flash pods are kept off it."""

    node: str = Field(description="The node's name (kubernetes.io/hostname).")
    image: str | None = Field(
        default=None, description="The flash image that failed there; a new flash image clears the list."
    )
    reason: str | None = Field(default=None, description="FlashAttentionLoadFailed or FlashVariantCrashLoop.")
    message: str | None = Field(default=None, description="The pod's own error message.")
    pod: str | None = Field(default=None, description="The pod that reported it.")
    at: str | None = Field(default=None, description="When the node was listed (RFC 3339).")


class AttentionStatus(_Model):
    """Requested versus actually running attention backend."""

    requested: Attention | None = Field(default=None, description="spec.attention as last reconciled.")
    active: str | None = Field(
        default=None,
        description=(
            "What the ready pods report on /health: flash_attention_2, sdpa, mixed (see counts) or "
            "unknown (no ready pod has reported yet)."
        ),
    )
    counts: dict[str, int] | None = Field(
        default=None,
        description=(
            "Ready pods per reported backend, and `unknown`: pods without a ready /health report "
            "(loading, unreachable: see the HealthProbed condition)."
        ),
    )
    flash_errors: list[FlashError] | None = Field(
        default=None, description="Distinct flash-attn errors the pods report."
    )
    fallback: FallbackRecord | None = Field(
        default=None, description="Set while the deployment is rolled back to the sdpa variant."
    )
    retry_flash: str | None = Field(
        default=None, description="Value of the vlm.omega.io/retry-flash annotation last acted on."
    )
    bad_nodes: list[BadNode] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Nodes flash-attn failed on (an error of a node-scoped kind) while the OmegaVLM stays on "
            "flash: the flash pods get a required node affinity kubernetes.io/hostname NotIn these. The "
            "whole OmegaVLM falls back to sdpa when no pod runs flash on another node and failures were "
            "seen on two nodes, or no other node can take a flash pod. Cleared by a new flash image or the "
            "vlm.omega.io/retry-flash annotation."
        ),
    )


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(
        description="Condition type: Ready, Progressing, Schedulable or FlashAttentionDegraded."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason.")
    message: str = Field(description="Human-readable detail.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this was computed for."
    )
    last_transition_time: str = Field(description="When status last flipped (RFC 3339).")


class OmegaVLMStatus(_Model):
    """Observed state, written by the operator."""

    observed_generation: int | None = Field(default=None, description="metadata.generation last reconciled.")
    phase: Phase | None = Field(default=None, description="Pending, Progressing, Ready, Degraded or Failed.")
    replicas: int | None = Field(default=None, description="Pods of the Deployment.")
    ready_replicas: int | None = Field(default=None, description="Ready pods of the Deployment.")
    selector: str | None = Field(
        default=None,
        description="Label selector of the pods, as a string (the scale subresource's, for autoscalers).",
    )
    replica_summary: str | None = Field(default=None, description="ready/desired, for kubectl get.")
    image: str | None = Field(default=None, description="Image the Deployment runs.")
    variant: Variant | None = Field(
        default=None, description="Image variant the Deployment runs: flash or sdpa."
    )
    attention: AttentionStatus | None = Field(
        default=None, description="Requested and active attention backend."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Progressing, Schedulable, FlashAttentionDegraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class OmegaVLM(_Model):
    """An OmegaVLM: a vision-language-model inference service on NVIDIA Hopper GPU nodes."""

    spec: OmegaVLMSpec
    status: OmegaVLMStatus | None = None
