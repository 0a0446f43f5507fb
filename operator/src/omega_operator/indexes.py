"""The kopf indexes: watch caches of the OmegaVLMs and of our children and pods, and lookups in them.

Children and pods are filtered server-side by our managed-by label (see
:mod:`omega_operator.kopf_settings`) and keyed by (namespace, instance label), so a reconcile finds
everything it observes here without an API request. Importing this module registers the indexes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from omega_operator import builders as b
from omega_operator.api.models import GROUP, PLURAL, VERSION

MANAGED = {"app.kubernetes.io/managed-by": b.MANAGED_BY}
SELECTOR = f"app.kubernetes.io/managed-by={b.MANAGED_BY}"
INSTANCE = "app.kubernetes.io/instance"

Key = tuple[str, str]  # (namespace, name of the OmegaVLM)


def raw(body: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, plain-dict copy of a kopf body (kopf's own views are live and read-only)."""
    return copy.deepcopy(dict(body))


def child_key(namespace: str | None, labels: Mapping[str, str]) -> Key | None:
    """The OmegaVLM a child or pod belongs to, by its instance label (None without one)."""
    instance = labels.get(INSTANCE)
    return (namespace or "", instance) if instance else None


def _by_instance(body: kopf.Body, namespace: str | None, labels: kopf.Labels) -> Any:
    key = child_key(namespace, labels)
    return {key: raw(body)} if key else None


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def deployments_idx(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    return _by_instance(body, namespace, labels)


@kopf.index("", "v1", "services", labels=MANAGED)
def services_idx(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    return _by_instance(body, namespace, labels)


@kopf.index("policy", "poddisruptionbudgets", labels=MANAGED)
def pdbs_idx(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    return _by_instance(body, namespace, labels)


@kopf.index("", "v1", "pods", labels=MANAGED)
def pods_idx(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    return _by_instance(body, namespace, labels)


@kopf.index("", "v1", "persistentvolumeclaims")
def claims_idx(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """The access modes of every claim (a pvc:// model claim that is ReadWriteOnce cannot serve
    pods on several nodes: model_claim.py)."""
    return {(namespace or "", name): list((body.get("spec") or {}).get("accessModes") or [])}


@kopf.index(GROUP, VERSION, PLURAL)
def omegavlms_idx(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """The OmegaVLMs themselves, so that a child's event can reconcile its parent."""
    return {(namespace or "", name): raw(body)}


@dataclass(frozen=True)
class Indexes:
    """The live indexes, as kopf hands them to handlers (the startup handler included)."""

    deployments: kopf.Index[Key, dict[str, Any]]
    services: kopf.Index[Key, dict[str, Any]]
    pdbs: kopf.Index[Key, dict[str, Any]]
    pods: kopf.Index[Key, dict[str, Any]]
    omegavlms: kopf.Index[Key, dict[str, Any]]
    claims: kopf.Index[Key, list[str]] | None = None

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        """Pick them out of a handler's keyword arguments."""
        # kopf names each index after its function (the handler id).
        return cls(
            deployments=kwargs["deployments_idx"],
            services=kwargs["services_idx"],
            pdbs=kwargs["pdbs_idx"],
            pods=kwargs["pods_idx"],
            omegavlms=kwargs["omegavlms_idx"],
            claims=kwargs.get("claims_idx"),
        )

    def pods_of(self, key: Key) -> list[dict[str, Any]]:
        """The pods of that OmegaVLM (they belong to ReplicaSets: the instance label finds them)."""
        return [dict(p) for p in self.pods.get(key, [])]

    def claim_modes(self, namespace: str, claim: str | None) -> list[str] | None:
        """The access modes of a claim in that namespace (None when unknown or no claim)."""
        if claim is None or self.claims is None:
            return None
        found = list(self.claims.get((namespace, claim), []))
        return list(found[0]) if found else None

    def parents(self, key: Key | None) -> list[dict[str, Any]]:
        """The OmegaVLM(s) cached under that key (none for None)."""
        return list(self.omegavlms.get(key, [])) if key else []

    def bodies(self) -> list[Mapping[str, Any]]:
        """Every cached OmegaVLM."""
        return [body for bodies in list(self.omegavlms.values()) for body in list(bodies)]


def owned(index: kopf.Index[Key, dict[str, Any]], key: Key, uid: str) -> dict[str, Any] | None:
    """The cached child of that OmegaVLM (owned by this uid: a same-named predecessor's child is not ours)."""
    for obj in index.get(key, []):
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        if any(o.get("uid") == uid for o in owners):
            return dict(obj)
    return None
