"""The running operator: the one object that owns the API client, prober, object cache and refresh loop.

It runs one OmegaVLM's reconcile under its lock with what they hold.

Created by the kopf startup handler and kept in kopf's ``memo`` (handlers reach it as
``memo.operator``); closed by the cleanup handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from omega_operator import metrics
from omega_operator.cache import ObjectCache
from omega_operator.credentials import load_credentials
from omega_operator.health_probed import ProbeLedger
from omega_operator.indexes import Indexes, child_key, owned, raw
from omega_operator.kube import ApiError, Kube
from omega_operator.peering_gate import Peer, PeeringGate
from omega_operator.probe_reuse import reusable_probes
from omega_operator.prober import HealthProber
from omega_operator.reconcile import Observed, model_claim_of, reconcile
from omega_operator.refresher import Refresher
from omega_operator.settings import OperatorSettings

log = logging.getLogger("omega_operator")


def current_body(passed: dict[str, Any], indexed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The body to reconcile, re-read from the index under the object's lock: the index's copy of
    the same object (uid) when it is at least as new; ``passed`` when the index lags behind it (or
    does not have it yet); None when ``passed`` is of an older generation than the index (the tick
    is stale: the newer spec has its own reconcile and must not be overwritten by the old one)."""
    uid = passed["metadata"].get("uid")
    mine = next((raw(b) for b in indexed if (b.get("metadata") or {}).get("uid") == uid), None)
    if mine is None:
        return passed
    old_gen = int(passed["metadata"].get("generation") or 0)
    new_gen = int(mine["metadata"].get("generation") or 0)
    if old_gen < new_gen:
        return None
    return passed if new_gen < old_gen else mine


class Operator:
    """One per process: the API client, the prober, the cache and the refresh loop."""

    def __init__(
        self, kube: Kube, prober: HealthProber, indexes: Indexes, settings: OperatorSettings
    ) -> None:
        self.kube = kube
        self.prober = prober
        self.indexes = indexes
        self.settings = settings
        self.cache = ObjectCache()
        self.ledger = ProbeLedger(settings.probe_interval)
        self._loop: asyncio.Task[None] | None = None
        self.gate: PeeringGate | None = None  # with peering: the refresh loop runs only while active
        self._gate_loop: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, settings: OperatorSettings, indexes: Indexes, peer: Peer | None = None) -> Operator:
        """Connect (one Credentials for the API client and the proxy prober: one token, re-read
        when rotated), serve /metrics and start the refresh loop (with peering: gated on this
        process, ``peer``, being the active replica)."""
        creds = load_credentials()
        kube = Kube(creds, request_timeout=settings.request_timeout)
        prober = HealthProber(
            timeout_s=settings.probe_timeout,
            max_concurrency=settings.probe_concurrency,
            proxy=creds if settings.health_probe_mode == "proxy" else None,
            fallback_proxy=creds if settings.health_probe_mode == "auto" else None,
        )
        op = cls(kube, prober, indexes, settings)
        metrics.serve(settings.metrics_port)
        bodies = indexes.bodies
        if settings.peering is not None and peer is not None:
            gate = op.gate = PeeringGate(
                kube, settings.peering, list(settings.namespaces), peer, min(settings.probe_interval, 5.0)
            )
            op._gate_loop = asyncio.create_task(gate.run())

            def bodies() -> list[Mapping[str, Any]]:
                return [] if gate.paused else indexes.bodies()

        refresher = Refresher(settings.probe_interval, bodies, op.reconcile)
        op._loop = asyncio.create_task(refresher.run())
        return op

    async def close(self) -> None:
        """Stop the loop, close the prober's and the API client's sessions."""
        for task in (self._loop, self._gate_loop):
            if task is not None:
                task.cancel()
        await self.prober.close()
        await self.kube.close()

    async def reconcile(self, body: Mapping[str, Any], probe: bool = True) -> None:
        """Reconcile one OmegaVLM with what the caches hold; ``probe=False`` reuses the last probe
        round unless it is stale. Transient API failures raise ``kopf.TemporaryError``."""
        body = raw(body)
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return  # garbage collection removes the children
        key = (meta["namespace"], meta["name"])
        uid = meta["uid"]
        ix, cache = self.indexes, self.cache
        async with cache.lock(uid):
            # The body as the index has it now (an update may have landed while this waited).
            current = current_body(body, ix.parents(key))
            if current is None:
                log.debug("skipping a reconcile of %s/%s for an older generation", key[0], key[1])
                return
            body = current
            # Read the caches under the lock: a reconcile that just finished has recorded its writes.
            pods = ix.pods_of(key)
            observed = Observed(
                deployment=cache.child(uid, "Deployment", owned(ix.deployments, key, uid)),
                service=cache.child(uid, "Service", owned(ix.services, key, uid)),
                pdb=cache.child(uid, "PodDisruptionBudget", owned(ix.pdbs, key, uid)),
                pods=pods,
                claim_modes=ix.claim_modes(key[0], model_claim_of(body)),
            )
            status = cache.status_for(uid, body)
            if status is not None:
                body["status"] = status
            earlier = None if probe else reusable_probes(cache.last_probes(uid), pods)
            try:
                res = await reconcile(self.kube, body, observed, self.prober, earlier, self.ledger)
            except ApiError as exc:
                if exc.status == 403 and "being terminated" in exc.message:
                    log.debug("namespace of %s/%s is being deleted: %s", key[0], key[1], exc)
                    return
                if exc.transient or exc.status == 404:
                    raise kopf.TemporaryError(f"API error, will retry: {exc}", delay=5) from exc
                raise
            cache.remember(
                uid, probes=res.probes, written=res.written, applied=res.objects, deleted=res.deleted
            )
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

    async def child_changed(self, namespace: str | None, labels: Mapping[str, str]) -> None:
        """A child or pod changed: reconcile its parent now, reusing the last probe round."""
        for parent in self.indexes.parents(child_key(namespace, labels)):
            try:
                await self.reconcile(parent, probe=False)
            except kopf.TemporaryError as exc:  # the next event or the refresh loop retries
                log.info("reconcile after a child event failed, will retry: %s", exc)

    def forget(self, namespace: str, name: str, uid: str) -> None:
        """A deleted OmegaVLM: drop its metric series and its cache entries."""
        metrics.forget_object(namespace, name)
        self.cache.forget(uid)
        self.ledger.forget(uid)
