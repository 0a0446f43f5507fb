"""Pure builders: an OmegaVLM spec -> the desired Deployment, Service and PodDisruptionBudget.

Nothing here talks to the API server. This module is the ONE place that maps the spec to the
server's environment (`server_env`) and to the pod (probes, security, volumes; where it may run comes
from `placement`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omega_operator import model_cache
from omega_operator.api.defaults import (
    DEFAULT_ATTENTION,
    DEFAULT_CRASH_LOOP_RESTARTS,
    DEFAULT_CRASH_LOOP_WINDOW_SECONDS,
    DEFAULT_DTYPE,
    DEFAULT_FALLBACK_ENABLED,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_MODEL_LENGTH,
    DEFAULT_PULL_POLICY,
    DEFAULT_REPLICAS,
    DEFAULT_SERVICE_PORT,
    DEFAULT_SERVICE_TYPE,
    DEFAULT_SHM_SIZE,
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_TERMINATION_GRACE,
)
from omega_operator.api.lifecycle import PRESTOP_DELAY, shutdown_timeout
from omega_operator.api.models import API_VERSION, KIND, OmegaVLMSpec
from omega_operator.health_report import FLASH_BACKEND
from omega_operator.placement import (
    affinity,
    container_resources,
    scheduling,
    tolerations,
)

FIELD_MANAGER = "omega-vlm-operator"
MANAGED_BY = FIELD_MANAGER
APP_NAME = "omega-vlm-server"
CONTAINER = "server"
CONTAINER_PORT = 8000
PORT_NAME = "http"
VARIANT_LABEL = "vlm.omega.io/variant"
MODEL_MOUNT = "/models"
SERVER_IMAGE_GID = 10001  # Dockerfile.server: USER 10001:10001

STARTUP_PERIOD = 10


@dataclass(frozen=True)
class Owner:
    """The parent OmegaVLM as children reference it."""

    name: str
    namespace: str
    uid: str


# ---------------------------------------------------------------- spec with defaults applied
# (the defaults themselves are written once, in omega_operator.api.models, next to the fields)


def replicas(spec: OmegaVLMSpec) -> int:
    return DEFAULT_REPLICAS if spec.replicas is None else spec.replicas


def attention(spec: OmegaVLMSpec) -> str:
    return spec.attention or DEFAULT_ATTENTION


def fallback_enabled(spec: OmegaVLMSpec) -> bool:
    if spec.fallback is None or spec.fallback.enabled is None:
        return DEFAULT_FALLBACK_ENABLED
    return spec.fallback.enabled


def crash_loop_restarts(spec: OmegaVLMSpec) -> int:
    if spec.fallback is None or spec.fallback.crash_loop_restarts is None:
        return DEFAULT_CRASH_LOOP_RESTARTS
    return spec.fallback.crash_loop_restarts


def crash_loop_window(spec: OmegaVLMSpec) -> int:
    """Seconds from a pod's start inside which its restarts count as a failed flash load."""
    if spec.fallback is None or spec.fallback.crash_loop_window_seconds is None:
        return DEFAULT_CRASH_LOOP_WINDOW_SECONDS
    return spec.fallback.crash_loop_window_seconds


def startup_timeout(spec: OmegaVLMSpec) -> int:
    """Seconds a pod may take to load the model (startup probe budget)."""
    return (spec.runtime.startup_timeout_seconds if spec.runtime else None) or DEFAULT_STARTUP_TIMEOUT


def termination_grace(spec: OmegaVLMSpec) -> int:
    """Seconds a pod has to stop (preStop, then SIGTERM, then SIGKILL)."""
    return spec.termination_grace_period_seconds or DEFAULT_TERMINATION_GRACE


def service_port(spec: OmegaVLMSpec) -> int:
    return (spec.service.port if spec.service else None) or DEFAULT_SERVICE_PORT


# ---------------------------------------------------------------- images and variants


def flash_image(spec: OmegaVLMSpec) -> str | None:
    """Image of the flash variant (None when neither flashImage nor tag is given)."""
    if spec.image.flash_image:
        return spec.image.flash_image
    return f"{spec.image.repository}:{spec.image.tag}-flash" if spec.image.tag else None


def sdpa_image(spec: OmegaVLMSpec) -> str | None:
    """Image of the sdpa variant (None when neither sdpaImage nor tag is given)."""
    if spec.image.sdpa_image:
        return spec.image.sdpa_image
    return f"{spec.image.repository}:{spec.image.tag}-sdpa" if spec.image.tag else None


def image_for(spec: OmegaVLMSpec, variant_: str) -> str:
    image = flash_image(spec) if variant_ == "flash" else sdpa_image(spec)
    if image is None:  # parse_spec's image rule makes this unreachable for valid specs
        raise ValueError(f"spec.image gives no {variant_} image")
    return image


def attn_impl(spec: OmegaVLMSpec, variant_: str) -> str:
    """ATTN_IMPL for the server: sdpa on the sdpa variant, flash_attention_2 on the flash one."""
    return "sdpa" if variant_ == "sdpa" else FLASH_BACKEND


# ---------------------------------------------------------------- environment (the one mapping)


@dataclass(frozen=True)
class ModelVolume:
    """How model.uri reaches the pod: MODEL_PATH, plus a read-only PVC mount for pvc://."""

    model_path: str
    claim: str | None = None


def model_volume(uri: str) -> ModelVolume:
    if uri.startswith("pvc://"):
        rest = uri[len("pvc://") :]
        claim, _, path = rest.partition("/")
        mount = f"{MODEL_MOUNT}/{claim}"
        return ModelVolume(model_path=f"{mount}/{path}".rstrip("/") if path else mount, claim=claim)
    return ModelVolume(model_path=uri)  # file:// and hf:// are the server's to resolve


def server_env(spec: OmegaVLMSpec, variant_: str) -> list[dict[str, Any]]:
    """The server container's environment: ours (DESIGN.md 3.2) first, then the user's, in order.

    The user's variables come after ours so they may reference ours as $(VAR); names that clash
    with ours are refused by validation, never silently overridden.
    """
    rt = spec.runtime
    ours = {
        "ATTN_IMPL": attn_impl(spec, variant_),
        "MAX_BATCH_SIZE": str((rt.max_batch_size if rt else None) or DEFAULT_MAX_BATCH_SIZE),
        "MAX_MODEL_LENGTH": str((rt.max_model_length if rt else None) or DEFAULT_MAX_MODEL_LENGTH),
        "DTYPE": (rt.dtype if rt else None) or DEFAULT_DTYPE,
        "MODEL_PATH": model_volume(spec.model.uri).model_path,
        "SERVED_MODEL_NAME": spec.model.name,
        "PORT": str(CONTAINER_PORT),
        "SHUTDOWN_TIMEOUT": str(shutdown_timeout(termination_grace(spec))),
        **model_cache.server_env(spec),  # hf://: HF_HOME on the cache volume, offline
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in ours.items()]
    for item in spec.env or []:
        env.append(item.model_dump(by_alias=True, exclude_none=True))
    return env


# ---------------------------------------------------------------- metadata


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the pods of one OmegaVLM (immutable once the Deployment exists)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    """:func:`selector_labels` as a label-selector string (status.selector, for the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "omega-vlm",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(owner: Owner) -> dict[str, Any]:
    return {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": labels(owner.name),
        "ownerReferences": [owner_reference(owner)],
    }


# ---------------------------------------------------------------- placement


# ---------------------------------------------------------------- pod


def probes(spec: OmegaVLMSpec) -> dict[str, dict[str, Any]]:
    """Startup on /health sized for big model loads, readiness on /health, liveness on /live."""
    timeout = startup_timeout(spec)
    return {
        "startupProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": STARTUP_PERIOD,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, -(-timeout // STARTUP_PERIOD)),
        },
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": PORT_NAME},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }


def pod_security_context() -> dict[str, Any]:
    """Non-root as the image's own user (no forced uid: the server image's HF_HOME and HOME belong
    to it), with the image's group as fsGroup so volumes (a model cache, emptyDirs) are writable."""
    return {"runAsNonRoot": True, "fsGroup": SERVER_IMAGE_GID, "seccompProfile": {"type": "RuntimeDefault"}}


def lifecycle() -> dict[str, Any]:
    """preStop: wait before SIGTERM so endpoints and load balancers stop sending new requests while
    the server still serves (exec sleep: the `sleep` action is 1.29+)."""
    return {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_DELAY)]}}}


def pod_template(
    spec: OmegaVLMSpec, name: str, variant_: str, exclude_nodes: Sequence[str] = ()
) -> dict[str, Any]:
    image = image_for(spec, variant_)
    mv = model_volume(spec.model.uri)
    shm = str((spec.runtime.shm_size if spec.runtime else None) or DEFAULT_SHM_SIZE)
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if mv.claim:
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": mv.claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": f"{MODEL_MOUNT}/{mv.claim}", "readOnly": True})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": spec.image.pull_policy or DEFAULT_PULL_POLICY,
        "ports": [{"name": PORT_NAME, "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": server_env(spec, variant_),
        "resources": container_resources(spec),
        **probes(spec),
        "lifecycle": lifecycle(),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.env_from:
        container["envFrom"] = [dict(e) for e in spec.env_from]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        **({"affinity": aff} if (aff := affinity(spec, exclude_nodes)) else {}),
        "tolerations": tolerations(spec),
        "volumes": volumes,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": termination_grace(spec),
        "automountServiceAccountToken": False,  # the server never calls the API server
    }
    pod_spec.update(scheduling(spec, selector_labels(name)))
    model_cache.attach(spec, name, pod_spec)  # hf://: cache volume and the download init container
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    meta: dict[str, Any] = {"labels": {**labels(name), VARIANT_LABEL: variant_}}
    if spec.pod_annotations:
        meta["annotations"] = dict(spec.pod_annotations)
    return {"metadata": meta, "spec": pod_spec}


# ---------------------------------------------------------------- children


def deployment(
    spec: OmegaVLMSpec, owner: Owner, variant_: str, exclude_nodes: Sequence[str] = ()
) -> dict[str, Any]:
    """The Deployment of server pods, as a server-side-apply body (``exclude_nodes``: kept off them)."""
    meta = _metadata(owner)
    meta["labels"] = {**meta["labels"], VARIANT_LABEL: variant_}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas(spec),
            "selector": {"matchLabels": selector_labels(owner.name)},
            # GPUs are scarce: take a pod down before starting its replacement, never surge. (A
            # rollback to sdpa of pods that still serve surges instead: reconcile sets rollout.strategy.)
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "revisionHistoryLimit": 3,
            # A rollout may take one full model load plus slack before it counts as stalled.
            "progressDeadlineSeconds": startup_timeout(spec) + 300,
            "template": pod_template(spec, owner.name, variant_, exclude_nodes),
        },
    }


def service(spec: OmegaVLMSpec, owner: Owner) -> dict[str, Any]:
    """The Service in front of the pods (OpenAI-compatible HTTP)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner),
        "spec": {
            "type": (spec.service.type if spec.service else None) or DEFAULT_SERVICE_TYPE,
            "selector": selector_labels(owner.name),
            "ports": [
                {"name": PORT_NAME, "port": service_port(spec), "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def pdb(
    spec: OmegaVLMSpec, owner: Owner, api_version: str, always_allow: bool = False
) -> dict[str, Any] | None:
    """A PodDisruptionBudget (at most one pod down at a time) when replicas > 1, else None.

    `api_version` is policy/v1 or policy/v1beta1, whichever the cluster serves (discovery).
    `always_allow` (API servers 1.27+) sets `unhealthyPodEvictionPolicy: AlwaysAllow`: a pod that
    is not Ready (loading, crash-looping) can always be evicted, so node drains never hang on
    pods that serve nothing; only Ready pods count against the budget.
    """
    if replicas(spec) <= 1:
        return None
    body: dict[str, Any] = {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner.name)}}
    if always_allow:
        body["unhealthyPodEvictionPolicy"] = "AlwaysAllow"
    return {
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner),
        "spec": body,
    }


def children(
    spec: OmegaVLMSpec,
    owner: Owner,
    variant_: str,
    pdb_api_version: str,
    pdb_always_allow: bool = False,
    exclude_nodes: Sequence[str] = (),
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(Deployment, Service, PodDisruptionBudget or None) for one OmegaVLM; its pods kept off
    ``exclude_nodes`` (the nodes flash-attn failed on)."""
    return (
        deployment(spec, owner, variant_, exclude_nodes),
        service(spec, owner),
        pdb(spec, owner, pdb_api_version, pdb_always_allow),
    )
