"""The kopf handlers: each hands one Kubernetes event to the running operator (runtime.Operator).

- One idempotent reconcile on create, update and resume; the refresh loop (started at startup)
  reconciles every object again each probe interval; child and pod events reconcile their parent
  at once (reusing the last probe round).
- Children and pods are read from kopf indexes (:mod:`omega_operator.indexes`), so a reconcile that
  finds nothing to do makes no API request.
- Transient API failures raise kopf.TemporaryError; bad specs become Ready=False InvalidSpec
  (a condition and an Event), not a crash loop of retries.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from omega_operator.api.models import GROUP, PLURAL, VERSION
from omega_operator.indexes import MANAGED, Indexes
from omega_operator.kopf_settings import configure
from omega_operator.peering_gate import own_peer
from omega_operator.runtime import Operator
from omega_operator.settings import OperatorSettings

log = logging.getLogger("omega_operator")

SETTINGS = OperatorSettings()
PEER = own_peer(SETTINGS.peering_priority)  # identity and priority given to kopf.run


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """KUBECONFIG when given (it may be set after the client libraries were imported), else in-cluster."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Configure kopf, then start the one :class:`Operator` (kept in kopf's memo for every handler)."""
    configure(settings, SETTINGS)
    memo.operator = Operator.start(SETTINGS, Indexes.from_kwargs(kwargs), PEER)
    log.info("omega-vlm-operator started: %s", SETTINGS.model_dump())


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the refresh loop and close the HTTP sessions."""
    if "operator" in memo:
        await memo.operator.close()


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-create")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile-update")
async def reconcile_handler(
    body: kopf.Body, reason: str, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Create, update and resume: the same idempotent reconcile."""
    await memo.operator.reconcile(body)
    if reason == "resume":
        log.info("resumed %s/%s", namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, id="deployment-changed")
@kopf.on.event("", "v1", "services", labels=MANAGED, id="service-changed")
@kopf.on.event("policy", "poddisruptionbudgets", labels=MANAGED, id="pdb-changed")
@kopf.on.event("", "v1", "pods", labels=MANAGED, id="pod-changed")
async def child_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A child or pod changed (or was deleted): reconcile its parent now, not at the next round.

    Status (readiness, scheduling) follows at once and a deleted or edited child is repaired at
    once. Pods are not probed here; the last probe round is reused.
    """
    await memo.operator.child_changed(namespace, labels)


@kopf.on.event(GROUP, VERSION, PLURAL)
def forget(type: str, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Drop a deleted OmegaVLM's metric series and cache entries."""
    if type == "DELETED":
        memo.operator.forget(namespace or "", name, str((body.get("metadata") or {}).get("uid")))
