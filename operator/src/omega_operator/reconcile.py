"""One idempotent reconcile of an OmegaVLM: validate, decide the variant, converge the children,
write the status; Events on transitions. Used for create, update, resume and the periodic timer.

Observed children and pods come in from the caller (kopf indexes: watch caches), so a reconcile
that finds everything in place makes no API request at all, reads included, unless it probes pods.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from omega_operator import builders as b
from omega_operator import conditions as c
from omega_operator import drift, fallback, metrics, model_cache, model_claim, rollback, rollout
from omega_operator import status as st
from omega_operator.api.validation import InvalidSpec, parse_spec
from omega_operator.fallback import nodes
from omega_operator.health_probed import ProbeLedger
from omega_operator.health_report import ProbeResult
from omega_operator.kube import ApiError, Kube
from omega_operator.prober import HealthProber, pod_target

log = logging.getLogger(__name__)


@dataclass
class Observed:
    """The children and pods of one OmegaVLM as the watch caches have them."""

    deployment: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    pdb: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    claim_modes: list[str] | None = None  # access modes of the pvc:// or cache claim, when known


def model_claim_of(body: dict[str, Any]) -> str | None:
    """The claim of a pvc:// spec.model.uri or of spec.model.cache, read from the raw body (None otherwise)."""
    model = (body.get("spec") or {}).get("model") or {}
    uri, cache = model.get("uri"), model.get("cache")
    if isinstance(uri, str) and (claim := b.model_volume(uri).claim):
        return claim
    if isinstance(uri, str) and uri.startswith("hf://") and isinstance(cache, dict):
        return str(cache.get("claimName") or f"{body['metadata']['name']}{model_cache.CLAIM_SUFFIX}")
    return None


@dataclass
class Result:
    """What a reconcile did (for tests, logs and metrics)."""

    outcome: str  # success | invalid | error
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_patch: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    action: str | None = None
    written: dict[str, Any] | None = None  # the object as the status patch returned it
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> object as applied
    probes: dict[str, ProbeResult] = field(default_factory=dict)  # pod -> /health result used


def owner_of(body: dict[str, Any]) -> b.Owner:
    meta = body["metadata"]
    return b.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


async def _probe(prober: HealthProber | None, pods: list[dict[str, Any]]) -> dict[str, ProbeResult]:
    """Probe the /health of every live pod that has an IP (none when no prober is configured)."""
    if prober is None:
        return {}
    targets = [
        pod_target(p)
        for p in pods
        if (p.get("status") or {}).get("podIP") and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]
    if not targets:
        return {}
    results = await prober.probe_many(targets)
    for r in results.values():
        metrics.observe_probe(r)
    return results


async def reconcile(
    kube: Kube,
    body: dict[str, Any],
    observed: Observed,
    prober: HealthProber | None = None,
    probes: dict[str, ProbeResult] | None = None,
    ledger: ProbeLedger | None = None,
) -> Result:
    """Converge one OmegaVLM. Raises ApiError on API failures (the caller maps them to retries).

    Pods are probed with `prober` unless `probes` (earlier results) are given; `Result.probes`
    returns what was used, so callers can reuse it for reconciles between probe rounds. `ledger`
    remembers when each pod last answered (the HealthProbed condition; none without it).
    """
    started = time.monotonic()
    try:
        res = await _reconcile(kube, body, observed, prober, probes, ledger)
    except Exception as exc:
        metrics.RECONCILES.labels("error").inc()
        metrics.count_error(metrics.error_kind(exc))
        raise
    finally:
        metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
    metrics.RECONCILES.labels(res.outcome).inc()
    if res.outcome == "invalid":
        metrics.count_error("invalid_spec")
    return res


async def _reconcile(
    kube: Kube,
    body: dict[str, Any],
    observed: Observed,
    prober: HealthProber | None,
    probes: dict[str, ProbeResult] | None,
    ledger: ProbeLedger | None = None,
) -> Result:
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    generation = meta.get("generation")
    old = copy.deepcopy(body.get("status") or {})
    old.pop("kopf", None)
    res = Result("success")

    async def event(type_: str, reason: str, message: str) -> None:
        res.events.append((type_, reason, message))
        kube.event_soon(body, type_, reason, message)

    # 1. Validate: a bad spec touches no child.
    try:
        spec = parse_spec(body.get("spec"))
    except InvalidSpec as exc:
        return await _mark_invalid(kube, body, old, generation, str(exc), res, event, datetime.now(UTC))

    # 2. Decide the variant (the fallback decision, fed by the pods' /health).
    if probes is None:
        probes = await _probe(prober, observed.pods)
    res.probes = probes
    probed = ledger.observe(str(meta.get("uid")), observed.pods, probes, time.time()) if ledger else None
    now = datetime.now(UTC)  # the clock, read once for the decision and the status it leads to
    views = [fallback.PodView.from_pod(p, b.CONTAINER) for p in observed.pods]
    decision = fallback.decide(
        fallback.fallback_spec(spec),
        old.get("attention"),
        views,
        probes,
        annotations=meta.get("annotations") or {},
        now=now,
    )
    res.action = decision.action.value
    # A rollback is recorded in the status before the Deployment moves (exactly one rollback,
    # even when the operator dies in between).
    recorded = await rollback.persist_fallback(kube, ns, name, decision)
    if recorded:
        old["attention"] = {**(old.get("attention") or {}), **recorded}
    variant = decision.variant
    image = b.image_for(spec, variant)

    # 3. Converge the children (apply only what differs from the watch cache).
    owner = owner_of(body)
    deployment, service, pdb = b.children(
        spec,
        owner,
        variant,
        await kube.pdb_api_version(),
        await kube.pdb_always_allow(),
        exclude_nodes=decision.excluded_nodes,
    )
    # A rollback replaces pods that still serve one new pod before one old pod (rollout.py).
    deployment["spec"]["strategy"] = rollout.strategy(decision, views)

    async def converge(kind: str, desired: dict[str, Any], actual: dict[str, Any] | None) -> None:
        desired = drift.stamp(desired)
        if drift.needs_apply(desired, actual):
            res.objects[kind] = await kube.apply(desired)
            res.applied.append(kind)

    async def drop_pdb() -> None:
        if pdb is None and observed.pdb is not None:
            version = observed.pdb.get("apiVersion") or await kube.pdb_api_version()
            if await kube.delete(version, "PodDisruptionBudget", ns, name):
                res.deleted.append("PodDisruptionBudget")

    try:
        cache_claim = model_cache.claim(spec, owner)
        if cache_claim is not None and drift.needs_apply(drift.stamp(deployment), observed.deployment):
            # The created cache claim goes with each Deployment write (it exists before the pods).
            res.objects["PersistentVolumeClaim"] = await kube.apply(cache_claim)
            res.applied.append("PersistentVolumeClaim")
        # Independent objects: write them concurrently.
        await asyncio.gather(
            converge("Deployment", deployment, observed.deployment),
            converge("Service", service, observed.service),
            converge("PodDisruptionBudget", pdb, observed.pdb) if pdb is not None else drop_pdb(),
        )
    except ApiError as exc:
        if exc.status == 422:  # the API server refused what the spec asks for (e.g. a bad affinity)
            return await _mark_invalid(kube, body, old, generation, f"spec: {exc.message}", res, event, now)
        raise

    # 4. Status.
    verdict = st.verdict(spec, decision)
    problems = verdict.problems
    claim_msg = model_claim.problem(spec, observed.claim_modes, observed.pods, name)
    if claim_msg:  # after Unschedulable (the scheduler's word first), before the pods' own problems
        unsched = [p for p in problems if p.reason == c.UNSCHEDULABLE]
        rest = [p for p in problems if p.reason != c.UNSCHEDULABLE]
        problems = [*unsched, st.Problem(model_claim.REASON, claim_msg), *rest]
    new = st.compute(
        spec=spec,
        generation=generation,
        old=old,
        attention=verdict.attention,
        variant=variant,
        image=image,
        deployment=res.objects.get("Deployment", observed.deployment),
        problems=problems,
        flash=verdict.flash,
        now=c.rfc3339(now),
        name=name,
        waiting_for_capacity=rollout.waiting_for_capacity(decision, views),
        probed=probed,
    )
    res.status_patch = st.diff(old, new)
    if res.status_patch:
        res.written = await kube.patch_status(ns, name, res.status_patch)

    # 5. Events on transitions, and metrics.
    if rollback.is_rollback_write(decision, observed.deployment, "Deployment" in res.applied):
        metrics.count_rollback(str(decision.reason), scope="fleet")
        await event("Warning", fallback.EVENT_REASON, decision.message)
    elif decision.action is fallback.Action.RESET:
        await event("Normal", "FlashAttentionRetry", decision.message)
    for bad in decision.new_bad_nodes:  # per-node memory: one Event and one count per listed node
        metrics.count_rollback(bad.reason, scope="node")
        msg = (
            f"flash-attn failed on node {bad.node} (pod {bad.pod}): {bad.message}; flash pods are kept off it"
        )
        await event("Warning", nodes.EXCLUDED_EVENT_REASON, msg)
    if "Deployment" in res.applied and (no_cache := model_cache.no_cache_warning(spec)):
        await event("Warning", model_cache.NO_CACHE_REASON, no_cache)
    if "Deployment" in res.applied and observed.deployment is None:
        await event("Normal", "Created", f"Deployment {name} created ({variant} variant, image {image})")
    elif old.get("variant") and old.get("variant") != variant:
        await event("Normal", "VariantChanged", f"image variant {old.get('variant')} -> {variant} ({image})")
    await _transition_events(old.get("conditions"), new["conditions"], event)
    metrics.observe_object(ns, name, new.get("phase"), verdict.attention.get("active"))
    metrics.observe_status(ns, name, b.replicas(spec), new.get("readyReplicas") or 0, new["conditions"])
    return res


async def _transition_events(old: Any, new: list[dict[str, Any]], event: Any) -> None:
    """Ready turning True or False (with its reason), Schedulable turning False."""
    was_ready = c.get(old, c.READY)
    now_ready = c.get(new, c.READY)
    if now_ready is not None and c.flipped(old, new, c.READY):
        if now_ready["status"] == "True":
            await event("Normal", "Ready", now_ready["message"])
        elif now_ready["reason"] != c.UNSCHEDULABLE and not (
            was_ready is None and now_ready["reason"] == c.REPLICAS_NOT_READY
        ):
            # Skip the first "not ready yet" of a new object (no news) and Unschedulable (its own Event below).
            await event("Warning", now_ready["reason"], now_ready["message"])
    sched = c.get(new, c.SCHEDULABLE)
    if sched and sched["status"] == "False" and c.flipped(old, new, c.SCHEDULABLE):
        await event("Warning", c.UNSCHEDULABLE, sched["message"])


async def _mark_invalid(
    kube: Kube,
    body: dict[str, Any],
    old: dict[str, Any],
    generation: int | None,
    message: str,
    res: Result,
    event: Any,
    now: datetime,
) -> Result:
    meta = body["metadata"]
    new = st.invalid(old=old, generation=generation, message=message, now=c.rfc3339(now))
    res.outcome = "invalid"
    res.status_patch = st.diff(old, new)
    if res.status_patch:
        res.written = await kube.patch_status(meta["namespace"], meta["name"], res.status_patch)
    before = c.get(old.get("conditions"), c.READY) or {}
    if before.get("reason") != c.INVALID_SPEC or before.get("message") != message:
        await event("Warning", c.INVALID_SPEC, message)
    metrics.observe_object(
        meta["namespace"], meta["name"], "Failed", (old.get("attention") or {}).get("active")
    )
    return res
