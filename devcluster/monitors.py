"""The chart's PodMonitor, ServiceMonitor and PrometheusRule as Prometheus configuration.

prometheus-operator turns those objects into scrape jobs and rule files; devcluster has no
prometheus-operator, so this module does the same translation for its own Prometheus (pure
functions), from the objects ``helm template`` renders out of ``charts/omega-vlm`` (:func:`render`).
The pods come from the API server with the labels Kubernetes discovery (role pod) gives them
(:mod:`devcluster.podsd`: Debian's Prometheus has no Kubernetes discovery), and Prometheus applies
the PodMonitor's selection and relabelling itself. The operator runs as a local process in the demo
and the tests, not behind a Service: its ServiceMonitor job reads file_sd entries that stand in for
the Service's endpoints, with the ``__meta_kubernetes_*`` labels endpoints discovery would give
(:func:`endpoint_entry`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devcluster.settings import repo_root

CHART = "charts/omega-vlm"
RELEASE = "omega-vlm"  # the release name devcluster renders the chart with
RELEASE_NAMESPACE = "omega-system"
TEMPLATES = ("templates/podmonitor.yaml", "templates/servicemonitor.yaml", "templates/prometheusrule.yaml")
# The operator's Service as the chart names and labels it for this release (what the
# ServiceMonitor selects); a local operator process registers itself under these.
OPERATOR_SERVICE = f"{RELEASE}-operator"
OPERATOR_SERVICE_LABELS = {
    "app.kubernetes.io/name": "omega-vlm",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "operator",
}
OPERATOR_PORT_NAME = "metrics"


def render(helm: Path, values: tuple[str, ...] = (), chart: Path | None = None) -> list[dict[str, Any]]:
    """``helm template`` the chart's monitoring objects, all enabled, plus ``--set`` ``values``."""
    if not helm.is_file():
        raise RuntimeError(
            f"helm not found at {helm}: `make setup` (python -m devcluster.helm install) puts it there"
        )
    sets = [
        "monitoring.podMonitor.enabled=true",
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
        *values,
    ]
    argv = [str(helm), "template", RELEASE, str(chart or repo_root() / CHART), "-n", RELEASE_NAMESPACE]
    for s in sets:
        argv += ["--set", s]
    for t in TEMPLATES:
        argv += ["--show-only", t]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"helm template of the monitoring objects failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _re(value: str) -> str:
    """``value`` as a literal in a Prometheus (RE2) regex."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", value)


def sanitize(label: str) -> str:
    """A Kubernetes label name as Prometheus's discovery spells it in ``__meta_*`` labels."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _selector_relabels(selector: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """``keep`` rules for a label selector on ``__meta_kubernetes_<kind>_label_*`` (as prometheus-operator)."""
    rules: list[dict[str, Any]] = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        k = sanitize(key)
        rules.append(
            {
                "action": "keep",
                "source_labels": [
                    f"__meta_kubernetes_{kind}_label_{k}",
                    f"__meta_kubernetes_{kind}_labelpresent_{k}",
                ],
                "regex": f"({_re(str(value))});true",
            }
        )
    for expr in selector.get("matchExpressions") or []:
        k, op, values = sanitize(expr["key"]), expr["operator"], expr.get("values") or []
        present = f"__meta_kubernetes_{kind}_labelpresent_{k}"
        if op in ("In", "NotIn"):
            alternatives = "|".join(_re(v) for v in values)
            action = "keep" if op == "In" else "drop"
            rules.append(
                {
                    "action": action,
                    "source_labels": [f"__meta_kubernetes_{kind}_label_{k}", present],
                    "regex": f"({alternatives});true",
                }
            )
        elif op in ("Exists", "DoesNotExist"):
            rules.append(
                {"action": "keep" if op == "Exists" else "drop", "source_labels": [present], "regex": "true"}
            )
        else:
            raise ValueError(f"selector operator {op!r} is not a Kubernetes label selector operator")
    return rules


def _namespace_relabels(spec: dict[str, Any], own_namespace: str) -> list[dict[str, Any]]:
    sel = spec.get("namespaceSelector") or {}
    if sel.get("any"):
        return []
    names = sel.get("matchNames") or [own_namespace]
    return [
        {
            "action": "keep",
            "source_labels": ["__meta_kubernetes_namespace"],
            "regex": "|".join(_re(n) for n in names),
        }
    ]


_RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "separator": "separator",
    "regex": "regex",
    "replacement": "replacement",
    "modulus": "modulus",
    "action": "action",
}


def user_relabels(relabelings: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The object's own ``relabelings`` (camelCase) as Prometheus ``relabel_configs``."""
    out = []
    for r in relabelings or []:
        unknown = set(r) - set(_RELABEL_KEYS)
        if unknown:
            raise ValueError(f"relabeling keys not understood: {sorted(unknown)}")
        rule = {_RELABEL_KEYS[k]: v for k, v in r.items()}
        if "action" in rule:
            rule["action"] = str(rule["action"]).lower()
        out.append(rule)
    return out


def podmonitor_jobs(pm: dict[str, Any], *, pods_file: Path, interval: str) -> list[dict[str, Any]]:
    """One scrape job per ``podMetricsEndpoints`` entry over the discovered pods (``pods_file``,
    kept by :mod:`devcluster.podsd`), relabelled as prometheus-operator relabels kubernetes_sd:
    selector, namespaces, pod phase, port, the ``namespace``/``container``/``pod``/``job``/
    ``endpoint`` labels, then the object's own relabelings.

    ``interval`` replaces the object's interval and timeout (devcluster scrapes fast).
    """
    meta, spec = pm["metadata"], pm["spec"]
    ns, name = meta.get("namespace", "default"), meta["name"]
    jobs = []
    for i, ep in enumerate(spec.get("podMetricsEndpoints") or []):
        relabel = [
            *_selector_relabels(spec.get("selector") or {}, "pod"),
            *_namespace_relabels(spec, ns),
            {
                "action": "drop",
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "regex": "(Failed|Succeeded)",
            },
        ]
        if ep.get("port"):
            port = str(ep["port"])
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": _re(port),
                }
            )
        elif ep.get("targetPort") is not None:
            port = str(ep["targetPort"])
            relabel.append(
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_pod_container_port_number"],
                    "regex": _re(port),
                }
            )
        else:
            raise ValueError(f"PodMonitor {ns}/{name}: endpoint {i} names no port")
        relabel += [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{ns}/{name}"},
            {"target_label": "endpoint", "replacement": port},
            *user_relabels(ep.get("relabelings")),
        ]
        jobs.append(
            {
                "job_name": f"podMonitor/{ns}/{name}/{i}",
                "honor_labels": bool(ep.get("honorLabels", False)),
                "metrics_path": ep.get("path", "/metrics"),
                "scheme": ep.get("scheme", "http"),
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "file_sd_configs": [{"files": [str(pods_file)], "refresh_interval": "5s"}],
                "relabel_configs": relabel,
            }
        )
    return jobs


def servicemonitor_jobs(sm: dict[str, Any], *, targets_glob: str, interval: str) -> list[dict[str, Any]]:
    """One scrape job per ServiceMonitor endpoint, reading file_sd entries written by
    :func:`endpoint_entry` and relabelled as prometheus-operator relabels endpoints discovery."""
    meta, spec = sm["metadata"], sm["spec"]
    ns, name = meta.get("namespace", "default"), meta["name"]
    jobs = []
    for i, ep in enumerate(spec.get("endpoints") or []):
        if not ep.get("port"):
            raise ValueError(f"ServiceMonitor {ns}/{name}: endpoint {i} names no port")
        relabel = [
            *_selector_relabels(spec.get("selector") or {}, "service"),
            *_namespace_relabels(spec, ns),
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_endpoint_port_name"],
                "regex": _re(ep["port"]),
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
            {"target_label": "endpoint", "replacement": ep["port"]},
            *user_relabels(ep.get("relabelings")),
        ]
        jobs.append(
            {
                "job_name": f"serviceMonitor/{ns}/{name}/{i}",
                "honor_labels": bool(ep.get("honorLabels", False)),
                "metrics_path": ep.get("path", "/metrics"),
                "scheme": ep.get("scheme", "http"),
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "file_sd_configs": [{"files": [targets_glob], "refresh_interval": "5s"}],
                "relabel_configs": relabel,
            }
        )
    return jobs


def endpoint_entry(
    address: str, *, namespace: str, service: str, labels: dict[str, str], port_name: str
) -> dict[str, Any]:
    """A file_sd entry for a local process standing in for a Service's endpoint: the
    ``__meta_kubernetes_*`` labels endpoints discovery would attach to it."""
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_service_name": service,
        "__meta_kubernetes_endpoint_port_name": port_name,
    }
    for key, value in labels.items():
        meta[f"__meta_kubernetes_service_label_{sanitize(key)}"] = value
        meta[f"__meta_kubernetes_service_labelpresent_{sanitize(key)}"] = "true"
    return {"targets": [address], "labels": meta}


def operator_entry(address: str) -> dict[str, Any]:
    """:func:`endpoint_entry` for an operator process: what the chart's operator Service would be."""
    return endpoint_entry(
        address,
        namespace=RELEASE_NAMESPACE,
        service=OPERATOR_SERVICE,
        labels=OPERATOR_SERVICE_LABELS,
        port_name=OPERATOR_PORT_NAME,
    )


def rule_file(pr: dict[str, Any]) -> dict[str, Any]:
    """A PrometheusRule's groups as a Prometheus rule file."""
    return {"groups": list((pr.get("spec") or {}).get("groups") or [])}


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered documents of one kind."""
    return [d for d in docs if d.get("kind") == kind]
