"""The kopf layer: thin wiring from Kubernetes events to `reconcile.reconcile`.

- One idempotent reconcile on create, update and resume, plus one refresh loop (every probe
  interval per object, jittered) that probes pods, refreshes observed state and repairs drifted
  children; child and pod events reconcile their parent at once.
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
import time
from collections.abc import Mapping
from typing import Any

import kopf

from omega_operator import builders as b
from omega_operator import metrics
from omega_operator.api.models import GROUP, PLURAL, VERSION
from omega_operator.credentials import load_credentials
from omega_operator.health import HealthProber, ProbeResult, jittered
from omega_operator.kube import ApiError, Kube
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
    applied: dict[tuple[str, str], tuple[dict[str, Any], bool]] = {}  # (object, seen in the cache)
    # uid -> the last round of pod /health results (probing happens on the timer and on spec
    # changes; reconciles triggered by child events reuse these unless a pod is news to them).
    probes: dict[str, dict[str, ProbeResult]] = {}
    indexes: dict[str, Any] | None = None
    loop: asyncio.Task[None] | None = None


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
    # One Credentials for the API client and the proxy prober: one token, re-read when rotated.
    creds = load_credentials()
    STATE.kube = Kube(creds, request_timeout=SETTINGS.request_timeout)
    proxy = creds if SETTINGS.health_probe_mode == "proxy" else None
    STATE.prober = HealthProber(
        timeout_s=SETTINGS.probe_timeout, max_concurrency=SETTINGS.probe_concurrency, proxy=proxy
    )
    metrics.serve(SETTINGS.metrics_port)
    STATE.loop = asyncio.create_task(refresh_loop(SETTINGS.probe_interval))
    log.info("omega-vlm-operator started: %s", SETTINGS.model_dump())


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if STATE.loop is not None:
        STATE.loop.cancel()
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


@kopf.index(GROUP, VERSION, PLURAL)
def omegavlms_idx(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """The OmegaVLMs themselves, so that a child's event can reconcile its parent."""
    return {(namespace or "", name): _raw(body)}


def _first(index: kopf.Index[Any, Any], key: tuple[str, str], uid: str) -> dict[str, Any] | None:
    """The cached child of that OmegaVLM (owned by this uid: a same-named predecessor's child is not ours)."""
    for obj in index.get(key, []):
        owners = (obj.get("metadata") or {}).get("ownerReferences") or []
        if any(o.get("uid") == uid for o in owners):
            return dict(obj)
    return None


# ------------------------------------------------------------------ the reconcile


async def _reconcile(body: Mapping[str, Any], probe: bool = True, **kwargs: Any) -> None:
    raw = _raw(body)
    meta = raw["metadata"]
    if meta.get("deletionTimestamp"):
        return  # garbage collection removes the children
    key = (meta["namespace"], meta["name"])
    uid = meta["uid"]
    assert STATE.kube is not None, "startup handler did not run"
    async with _lock(uid):
        # Read the caches under the lock: a reconcile that just finished has recorded its writes.
        # Pods belong to ReplicaSets, not to us: the instance label (server-side filtered) finds them.
        pods = [dict(p) for p in kwargs["pods_idx"].get(key, [])]
        observed = Observed(
            deployment=_newest(_first(kwargs["deployments_idx"], key, uid), uid, "Deployment"),
            service=_newest(_first(kwargs["services_idx"], key, uid), uid, "Service"),
            pdb=_newest(_first(kwargs["pdbs_idx"], key, uid), uid, "PodDisruptionBudget"),
            pods=pods,
        )
        mine = STATE.written.get(uid)
        if mine is not None and _rv(mine) > _rv(raw):
            raw["status"] = copy.deepcopy(mine.get("status") or {})
        try:
            # Reuse the last probe round between rounds, unless a pod is news to it (a new process
            # has none yet; a pod that turned Ready was last seen loading): then probe now.
            earlier = None if probe else _reusable_probes(STATE.probes.get(uid), pods)
            res = await reconcile(STATE.kube, raw, observed, STATE.prober, earlier)
        except ApiError as exc:
            if exc.status == 403 and "being terminated" in exc.message:
                log.debug("namespace of %s/%s is being deleted: %s", key[0], key[1], exc)
                return
            if exc.transient or exc.status == 404:
                raise kopf.TemporaryError(f"API error, will retry: {exc}", delay=5) from exc
            raise
        STATE.probes[uid] = res.probes
        if res.written is not None:
            STATE.written[uid] = res.written
        for kind, obj in res.objects.items():
            STATE.applied[(uid, kind)] = (obj, False)
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


def _reusable_probes(
    earlier: dict[str, ProbeResult] | None, pods: list[dict[str, Any]]
) -> dict[str, ProbeResult] | None:
    """The last probe round, or None when it is stale for these pods.

    Stale: a live pod with an IP that the round did not probe, or a pod the kubelet now reports
    Ready whose last /health was not ready (so `status.attention.active` follows readiness at
    once instead of one probe interval later).
    """
    if earlier is None:
        return None
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or not status.get("podIP"):
            continue
        result = earlier.get(str(meta.get("name")))
        if result is None:
            return None
        ready = any(
            cond.get("type") == "Ready" and cond.get("status") == "True"
            for cond in status.get("conditions") or []
        )
        if ready and not result.ready:
            return None
    return earlier


def _newest(cached: dict[str, Any] | None, uid: str, kind: str) -> dict[str, Any] | None:
    """The cache's copy of a child, unless our own last write is newer (its event not in yet).

    Once the cache has shown our write, the cache is the truth again: a child missing from it
    then was deleted by someone else and must be recreated.
    """
    entry = STATE.applied.get((uid, kind))
    if entry is None:
        return cached
    mine, seen = entry
    if cached is not None and _rv(cached) >= _rv(mine):
        STATE.applied[(uid, kind)] = (mine, True)
        return cached
    if cached is None:
        return None if seen else mine
    return mine


def _rv(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd revision); 0 when it is not one."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _remember_indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """kopf hands its indexes (live caches) to resource handlers only; keep them for the loop."""
    indexes = {k: v for k, v in kwargs.items() if k.endswith("_idx")}
    if STATE.indexes is None and "omegavlms_idx" in indexes:
        STATE.indexes = indexes
    return indexes


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-create")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile-update")
async def reconcile_handler(
    body: kopf.Body, reason: str, name: str, namespace: str | None, **kwargs: Any
) -> None:
    """Create, update and resume: the same idempotent reconcile."""
    await _reconcile(body, **kwargs)
    if reason == "resume":
        log.info("resumed %s/%s", namespace, name)


async def refresh_loop(interval: float, concurrency: int = 16) -> None:
    """Every `interval` (jittered per object, the first run at a random point of the first
    interval): probe each OmegaVLM's pods, refresh its status, repair drifted children.

    One loop for the whole operator instead of a kopf timer or daemon per object: kopf's
    timers and daemons put a finalizer on every object (an extra write each, and deletion
    would hang while the operator is down); GC needs none.
    """
    due: dict[str, float] = {}
    running: set[asyncio.Task[None]] = set()
    gate = asyncio.Semaphore(concurrency)

    async def tick(body: Mapping[str, Any], indexes: dict[str, Any]) -> None:
        async with gate:
            try:
                await _reconcile(body, **indexes)
            except Exception as exc:  # the next round retries; one bad object must not stop the loop
                log.warning("refresh of %s failed: %s", (body.get("metadata") or {}).get("name"), exc)

    while True:
        indexes = STATE.indexes
        now = time.monotonic()
        seen = set()
        if indexes is not None:
            for bodies in list(indexes["omegavlms_idx"].values()):
                for body in list(bodies):
                    uid = str((body.get("metadata") or {}).get("uid"))
                    seen.add(uid)
                    when = due.setdefault(uid, now + random.uniform(0.0, interval))
                    if now >= when:
                        due[uid] = now + jittered(interval, 0.1)
                        task = asyncio.create_task(tick(body, indexes))
                        running.add(task)
                        task.add_done_callback(running.discard)
        for uid in set(due) - seen:
            del due[uid]
        await asyncio.sleep(min(0.5, interval / 4))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, id="deployment-changed")
@kopf.on.event("", "v1", "services", labels=MANAGED, id="service-changed")
@kopf.on.event("policy", "poddisruptionbudgets", labels=MANAGED, id="pdb-changed")
@kopf.on.event("", "v1", "pods", labels=MANAGED, id="pod-changed")
async def child_changed(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
    """A child or pod changed (or was deleted): reconcile its parent now, not at the next timer.

    Status (readiness, scheduling) follows at once and a deleted or edited child is repaired at
    once. Pods are not probed here; the last probe round is reused.
    """
    key = _child_key(namespace, labels)
    parents = list(kwargs["omegavlms_idx"].get(key, [])) if key else []
    indexes = _remember_indexes(kwargs)
    for parent in parents:
        try:
            await _reconcile(parent, probe=False, **indexes)
        except kopf.TemporaryError as exc:  # the next event or the refresh loop retries
            log.info("reconcile after a child event failed, will retry: %s", exc)


@kopf.on.event(GROUP, VERSION, PLURAL)
def forget(type: str, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    """Drop a deleted OmegaVLM's metric series."""
    if type == "DELETED":
        metrics.forget_object(namespace or "", name)
        uid = str((body.get("metadata") or {}).get("uid"))
        STATE.written.pop(uid, None)
        STATE.locks.pop(uid, None)
        STATE.probes.pop(uid, None)
        for k in [k for k in STATE.applied if k[0] == uid]:
            del STATE.applied[k]
