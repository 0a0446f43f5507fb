"""Apply mutated OmegaVLM manifests to a real API server with the operator running, and judge each one.

Expected for every manifest: refused by the API server (the CRD's schema and CEL rules) with a message
that names a ``spec.`` field, or accepted and then either reconciled (a valid spec: a Deployment, Ready
not ``InvalidSpec``) or marked ``Ready=False InvalidSpec`` naming the field, with no Deployment written.
Which of the two an accepted spec deserves is decided by the operator's own validation layer
(``omega_operator.api.parse_spec``) on the spec as the API server stored it (unknown fields pruned);
the experiment checks that the running operator acts on it. A body the API server cannot decode at all
(a number beyond float64) is refused before any field is looked at: counted apart, its message names none.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

from omega_operator.api import GROUP, PLURAL, VERSION, InvalidSpec, parse_spec

KIND_BODY = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OmegaVLM"}


@dataclass
class ManifestReport:
    """Outcomes by kind, and every manifest whose outcome broke the expectation."""

    applied: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "outcomes": dict(sorted(self.outcomes.items())),
            "violation_count": len(self.violations),
            "violations": self.violations[:30],
            "seconds": round(self.seconds, 1),
        }


def expected_errors(spec: Any) -> list[str] | None:
    """The fields the operator's validation names for ``spec``, or None when the spec is valid."""
    try:
        parse_spec(spec if isinstance(spec, dict) else {"_": spec})
    except InvalidSpec as exc:
        return exc.fields
    return None


def _ready(obj: dict[str, Any]) -> dict[str, Any] | None:
    status = obj.get("status") or {}
    gen = obj["metadata"].get("generation")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("observedGeneration") == gen:
            return dict(cond)
    return None


def apply_batch(
    custom: Any,
    apps: Any,
    namespace: str,
    specs: list[dict[str, Any]],
    report: ManifestReport,
    *,
    start_index: int = 0,
    timeout: float = 90.0,
) -> None:
    """Create one OmegaVLM per spec, wait for the operator's verdict on the accepted ones, judge, delete."""
    from kubernetes.client.exceptions import ApiException

    accepted: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(specs, start=start_index):
        name = f"bad-{i}"
        body = {**KIND_BODY, "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        report.applied += 1
        try:
            created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except ApiException as exc:
            text = exc.body or ""
            if exc.status in (400, 422) and "cannot be handled as" in text:
                # not JSON the API server can decode into the object (e.g. a number beyond float64):
                # refused before any field is looked at, so its message names none
                report.outcomes["refused_undecodable"] += 1
            elif exc.status in (400, 422):
                report.outcomes["refused_by_api_server"] += 1
                if "spec" not in text:
                    report.violations.append(
                        {"name": name, "why": "refusal names no spec field", "body": text}
                    )
            else:
                report.violations.append({"name": name, "why": f"API error {exc.status}", "spec": spec})
            continue
        # what the operator sees: the spec as stored (the API server prunes fields its schema lacks)
        accepted[name] = created.get("spec") or {}
        if accepted[name] != spec:
            report.outcomes["pruned_by_api_server"] += 1
    deadline = time.monotonic() + timeout
    verdicts: dict[str, dict[str, Any]] = {}
    while accepted.keys() - verdicts.keys() and time.monotonic() < deadline:
        for name in accepted.keys() - verdicts.keys():
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            cond = _ready(obj)
            if cond is not None:
                verdicts[name] = cond
        time.sleep(0.5)
    for name, spec in accepted.items():
        cond = verdicts.get(name)
        if cond is None:
            report.violations.append(
                {"name": name, "why": "no Ready condition for its generation", "spec": spec}
            )
            continue
        fields = expected_errors(spec)
        has_deployment = _deployment_exists(apps, namespace, name)
        if fields is not None:
            report.outcomes["marked_invalid_spec"] += 1
            if cond.get("reason") != "InvalidSpec":
                report.violations.append(
                    {"name": name, "why": f"invalid, but Ready reason {cond.get('reason')}", "spec": spec}
                )
            elif not any(f in cond.get("message", "") for f in fields):
                report.violations.append(
                    {"name": name, "why": f"message names none of {fields}", "message": cond.get("message")}
                )
            if has_deployment:
                report.violations.append(
                    {"name": name, "why": "a Deployment was written for an invalid spec", "spec": spec}
                )
        else:
            report.outcomes["reconciled_valid"] += 1
            if cond.get("reason") == "InvalidSpec" or not has_deployment:
                report.violations.append(
                    {
                        "name": name,
                        "why": f"valid, but {cond.get('reason')} / deployment={has_deployment}",
                        "spec": spec,
                    }
                )
    for name in accepted:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def _deployment_exists(apps: Any, namespace: str, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True
