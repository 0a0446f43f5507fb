"""The kopf layer: thin wiring from Kubernetes events to `reconcile.reconcile`.

- One idempotent reconcile on create, update and resume, plus a timer (every probe interval,
  jittered start) that refreshes observed state, probes pods and repairs drifted children.
- Children and pods are read from kopf indexes (watch caches, filtered server-side by our
  managed-by label), so a reconcile that finds nothing to do makes no API request.
- Transient API failures raise kopf.TemporaryError; bad specs become Ready=False InvalidSpec
  (a condition and an Event), not a crash loop of retries.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import kopf

from omega_operator import builders as b
from omega_operator import metrics
from omega_operator.api.models import GROUP, PLURAL, VERSION
from omega_operator.health import HealthProber, ProxyConfig
from omega_operator.kube import ApiError, Kube, load_credentials
from omega_operator.reconcile import Observed, reconcile
from omega_operator.settings import OperatorSettings

log = logging.getLogger("omega_operator")

SETTINGS = OperatorSettings()
MANAGED = {"app.kubernetes.io/managed-by": b.MANAGED_BY}
SELECTOR = f"app.kubernetes.io/managed-by={b.MANAGED_BY}"
INSTANCE = "app.kubernetes.io/instance"
STORAGE_PREFIX = "vlm.omega.io"


class _State:
    kube: Kube | None = None
    prober: HealthProber | None = None
    locks: dict[str, asyncio.Lock] = {}
    # uid -> the object as our last status patch returned it: a handler that starts with an
    # older body (the watch event of our own write not yet in) uses this status instead.
    written: dict[str, dict[str, Any]] = {}
    # (uid, kind) -> a child as our last apply returned it (newer than the cache until its event).
    applied: dict[tuple[str, str], dict[str, Any]] = {}


STATE = _State()


def _lock(uid: str) -> asyncio.Lock:
    return STATE.locks.setdefault(uid, asyncio.Lock())


def configure(settings: kopf.OperatorSettings, ours: OperatorSettings = SETTINGS) -> None:
    """Apply our typed settings to kopf's."""
    # kopf's own per-handler Events ("Handler succeeded") would be API writes on every reconcile.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = b.FIELD_MANAGER
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.networking.request_timeout = ours.request_timeout
    settings.execution.max_workers = ours.max_workers
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    for plural in ("deployments", "services", "poddisruptionbudgets", "pods"):
        settings.watching.label_selectors[plural] = SELECTOR


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """KUBECONFIG when given (it may be set after the client libraries were imported), else in-cluster."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)
    STATE.kube = Kube(load_credentials(), request_timeout=SETTINGS.request_timeout)
    proxy = None
    if SETTINGS.health_probe_mode == "proxy":
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        cfg = k8s_client.Configuration()
        if os.environ.get("KUBECONFIG") or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_kube_config(client_configuration=cfg)
        else:
            k8s_config.load_incluster_config(client_configuration=cfg)
        proxy = ProxyConfig.from_kubernetes(cfg)
    STATE.prober = HealthProber(
        timeout_s=SETTINGS.probe_timeout, max_concurrency=SETTINGS.probe_concurrency, proxy=proxy
    )
    metrics.serve(SETTINGS.metrics_port)
    log.info("omega-vlm-operator started: %s", SETTINGS.model_dump())


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if STATE.prober is not None:
        await STATE.prober.close()
    if STATE.kube is not None:
        await STATE.kube.close()


# ------------------------------------------------------------------ watch caches of children


def _raw(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def _child_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str] | None:
    instance = labels.get(INSTANCE)
    return (namespace or "", instance) if instance else None


@kopf.index("apps", "v1", "deployments", labels=MANAGED)
def deployments_idx(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    key = _child_key(namespace, labels)
    return {key: _raw(body)} if key else None


@kopf.index("", "v1", "services", labels=MANAGED)
def services_idx(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    key = _child_key(namespace, labels)
    return {key: _raw(body)} if key else None


@kopf.index("policy", "poddisruptionbudgets", labels=MANAGED)
def pdbs_idx(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    key = _child_key(namespace, labels)
    return {key: _raw(body)} if key else None


@kopf.index("", "v1", "pods", labels=MANAGED)
def pods_idx(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    key = _child_key(namespace, labels)
    return {key: _raw(body)} if key else None


def _first(index: kopf.Index[Any, Any], key: tuple[str, str], uid: str) -> dict[str, Any] | None:
    """The cached child of that OmegaVLM (owned by this uid: a same-named predecessor's child is not ours)."""
    for obj in index.get(key, []):
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        if any(o.get("uid") == uid for o in owners):
            return dict(obj)
    return None


# ------------------------------------------------------------------ the reconcile


async def _reconcile(body: kopf.Body, **kwargs: Any) -> None:
    raw = _raw(body)
    meta = raw["metadata"]
    if meta.get("deletionTimestamp"):
        return  # garbage collection removes the children
    key = (meta["namespace"], meta["name"])
    uid = meta["uid"]
    # Pods belong to ReplicaSets, not to us: the instance label (server-side filtered) finds them.
    pods = [dict(p) for p in kwargs["pods_idx"].get(key, [])]
    observed = Observed(
        deployment=_newest(
            _first(kwargs["deployments_idx"], key, uid), STATE.applied.get((uid, "Deployment"))
        ),
        service=_newest(_first(kwargs["services_idx"], key, uid), STATE.applied.get((uid, "Service"))),
        pdb=_newest(_first(kwargs["pdbs_idx"], key, uid), STATE.applied.get((uid, "PodDisruptionBudget"))),
        pods=pods,
    )
    assert STATE.kube is not None, "startup handler did not run"
    async with _lock(uid):
        mine = STATE.written.get(uid)
        if mine is not None and _rv(mine) > _rv(raw):
            raw["status"] = copy.deepcopy(mine.get("status") or {})
        try:
            res = await reconcile(STATE.kube, raw, observed, STATE.prober)
        except ApiError as exc:
            if exc.transient or exc.status == 404:
                raise kopf.TemporaryError(f"API error, will retry: {exc}", delay=5) from exc
            raise
    if res.written is not None:
        STATE.written[uid] = res.written
    for kind, obj in res.objects.items():
        STATE.applied[(uid, kind)] = obj
    for kind in res.deleted:
        STATE.applied.pop((uid, kind), None)
    if res.applied or res.deleted or res.status_patch:
        log.info(
            "reconciled %s/%s: applied=%s deleted=%s status=%s action=%s",
            key[0],
            key[1],
            res.applied,
            res.deleted,
            sorted(res.status_patch),
            res.action,
        )


def _newest(cached: dict[str, Any] | None, mine: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cache's copy unless our own last write is newer (its watch event is not in yet).

    A child deleted by someone else is gone from the cache while ours still exists: trust the
    cache then (the delete is newer than anything we wrote), except right after our own create.
    """
    if mine is None:
        return cached
    if cached is None:
        return None
    return mine if _rv(mine) > _rv(cached) else cached


def _rv(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd revision); 0 when it is not one."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-create")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile-update")
async def reconcile_handler(body: kopf.Body, **kwargs: Any) -> None:
    """Create, update and resume: the same idempotent reconcile."""
    await _reconcile(body, **kwargs)


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    id="refresh",
    interval=SETTINGS.probe_interval,
    initial_delay=random.uniform(0.5, 1.0) * SETTINGS.probe_interval,
)
async def refresh(body: kopf.Body, **kwargs: Any) -> None:
    """Refresh observed state (pods, /health), repair drifted or deleted children."""
    await _reconcile(body, **kwargs)


@kopf.on.event(GROUP, VERSION, PLURAL)
def forget(type: str, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    """Drop a deleted OmegaVLM's metric series."""
    if type == "DELETED":
        metrics.forget_object(namespace or "", name)
        uid = str((body.get("metadata") or {}).get("uid"))
        STATE.written.pop(uid, None)
        STATE.locks.pop(uid, None)
        for k in [k for k in STATE.applied if k[0] == uid]:
            del STATE.applied[k]
