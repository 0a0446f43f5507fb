"""spec.model.cache: the volume that keeps hf:// weights for every pod (part of ModelSource).

Modelled on the NIM operator's NIMCache (`storage.pvc`: an existing claim, or one the operator
creates with a storage class, size and access mode) and KServe's LocalModelCache (download once,
every replica reads it): the download runs before the server (an init container of each pod,
serialised by a lock on the volume and skipped once a marker says the snapshot is complete), so
it never counts against the startup probe, and a rollback to the sdpa variant reads the cache.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from omega_operator.api import defaults as d
from omega_operator.api.base import ApiModel, Quantity

CacheAccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]


class ModelCache(ApiModel):
    """An existing claim (claimName) or a claim the operator creates (size, storageClass, accessMode)."""

    claim_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description=(
            "An existing PersistentVolumeClaim in the OmegaVLM's namespace to keep the weights in "
            "(mounted read-write: the first pod downloads into it). Not with size, storageClass or "
            "accessMode."
        ),
    )
    size: Quantity | None = Field(
        default=None,
        description=(
            "Size of the claim the operator creates, `<name>-model-cache`, owned by the OmegaVLM "
            "(deleted with it). Leave room for the whole snapshot (e.g. 70Gi for 62 GB of weights)."
        ),
    )
    storage_class: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="StorageClass of the created claim; when unset, the cluster's default StorageClass.",
    )
    access_mode: CacheAccessMode | None = Field(
        default=None,
        description=(
            "Access mode of the created claim. ReadWriteMany serves replicas on any node; "
            "ReadWriteOnce keeps all pods on the node that holds the volume (others wait on "
            f"Multi-Attach). {d.describe(d.DEFAULT_CACHE_ACCESS_MODE)}"
        ),
    )
