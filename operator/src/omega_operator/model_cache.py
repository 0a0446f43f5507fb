"""The pod pieces of an hf:// model: its cache volume, the download init container, its claim. Pure.

For an hf:// model.uri every pod gets a `model-download` init container (the server image, `omega-vlm-server
download`) that fetches the snapshot into HF_HOME on the cache volume, under a lock, and skips it when a
marker says it is complete; the server container then reads it offline (HF_HUB_OFFLINE=1), so
the download is never inside the startup probe and a restart or a rollback to the sdpa variant
(the same volume, the same HF_HOME) never goes to the network. The volume is spec.model.cache
(an existing claim, or `<name>-model-cache` created and owned by the OmegaVLM, as the NIM
operator's NIMCache does), else an emptyDir per pod, which downloads at every pod start: the
status and a Warning Event say so (:func:`no_cache_warning`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from omega_operator.api.defaults import DEFAULT_CACHE_ACCESS_MODE
from omega_operator.api.models import OmegaVLMSpec

if TYPE_CHECKING:
    from omega_operator.builders import Owner

VOLUME = "model-cache"
INIT_CONTAINER = "model-download"
HF_HOME = "/var/cache/omega-vlm/hf"  # the cache volume's mount path, HF_HOME of both containers
CLAIM_SUFFIX = "-model-cache"
NO_CACHE_REASON = "ModelDownloadedEveryStart"
# The server image's download entry point: `omega-vlm-server download` (ENTRYPOINT + args).
DOWNLOAD_ARGS = ["download"]


def uses_hub(spec: OmegaVLMSpec) -> bool:
    """True for an hf:// model.uri: the weights come from the Hub (or HF_ENDPOINT)."""
    return spec.model.uri.startswith("hf://")


def claim_name(spec: OmegaVLMSpec, name: str) -> str | None:
    """The cache claim: spec.model.cache.claimName, else the created `<name>-model-cache`; None
    without a cache."""
    cache = spec.model.cache
    if cache is None:
        return None
    return cache.claim_name or f"{name}{CLAIM_SUFFIX}"


def claim(spec: OmegaVLMSpec, owner: Owner) -> dict[str, Any] | None:
    """The PersistentVolumeClaim the operator creates (server-side-apply body), owned by the OmegaVLM
    so it goes with it; None for an existing claim or no cache."""
    from omega_operator.builders import labels, owner_reference

    cache = spec.model.cache
    if cache is None or cache.claim_name is not None or cache.size is None:
        return None
    body: dict[str, Any] = {
        "accessModes": [cache.access_mode or DEFAULT_CACHE_ACCESS_MODE],
        "resources": {"requests": {"storage": str(cache.size)}},
    }
    if cache.storage_class:
        body["storageClassName"] = cache.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": f"{owner.name}{CLAIM_SUFFIX}",
            "namespace": owner.namespace,
            "labels": labels(owner.name),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": body,
    }


def volume(spec: OmegaVLMSpec, name: str) -> dict[str, Any] | None:
    """The cache volume of the pod: the claim (read-write), else an emptyDir; None unless hf://."""
    if not uses_hub(spec):
        return None
    claim_ = claim_name(spec, name)
    if claim_ is None:
        return {"name": VOLUME, "emptyDir": {}}
    return {"name": VOLUME, "persistentVolumeClaim": {"claimName": claim_}}


def mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": HF_HOME}


def server_env(spec: OmegaVLMSpec) -> dict[str, str]:
    """What the server container adds for hf://: HF_HOME on the volume, and offline (the init
    container has downloaded; a missing snapshot fails fast instead of downloading in the probe)."""
    return {"HF_HOME": HF_HOME, "HF_HUB_OFFLINE": "1"} if uses_hub(spec) else {}


def init_container(server: dict[str, Any]) -> dict[str, Any]:
    """The download init container, made from the server container (same image and so the same
    variant, user, env and envFrom: HF_TOKEN or HF_ENDPOINT from spec.env reach it; resources),
    online (HF_HUB_OFFLINE=0), without probes, ports and hooks."""
    env = [
        {"name": "HF_HUB_OFFLINE", "value": "0"} if e.get("name") == "HF_HUB_OFFLINE" else e
        for e in server.get("env") or []
    ]
    out: dict[str, Any] = {
        "name": INIT_CONTAINER,
        "image": server["image"],
        "imagePullPolicy": server["imagePullPolicy"],
        "args": list(DOWNLOAD_ARGS),
        "env": env,
        "resources": server["resources"],
        "volumeMounts": [mount()],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(server["securityContext"]),
    }
    if server.get("envFrom"):
        out["envFrom"] = list(server["envFrom"])
    return out


def attach(spec: OmegaVLMSpec, name: str, pod_spec: dict[str, Any]) -> None:
    """Add the cache volume, its mount on the server container and the download init container to
    a pod spec whose first container is the server (nothing unless hf://)."""
    vol = volume(spec, name)
    if vol is None:
        return
    server = pod_spec["containers"][0]
    server["volumeMounts"] = [*server.get("volumeMounts", []), mount()]
    pod_spec["volumes"] = [*pod_spec.get("volumes", []), vol]
    pod_spec["initContainers"] = [init_container(server)]


def no_cache_warning(spec: OmegaVLMSpec) -> str | None:
    """The Warning for an hf:// model without spec.model.cache, else None."""
    if not uses_hub(spec) or spec.model.cache is not None:
        return None
    return (
        f"spec.model.uri {spec.model.uri} has no spec.model.cache: every pod start (each replica, "
        "restart, rollout and rollback to sdpa) downloads the weights again into an emptyDir; set "
        "spec.model.cache.size (or claimName) to download once"
    )
