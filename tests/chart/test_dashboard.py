"""The Grafana dashboard: shipped as a labelled ConfigMap, with the agreed panels, querying only
metrics that the operator and the server really export."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from tests.chart.helm import CHART, one, render

DASHBOARD = CHART / "dashboards" / "omega-vlm.json"
# Prometheus functions and keywords that look like identifiers in PromQL.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
# Labels Prometheus adds from the scrape target (ServiceMonitor/PodMonitor relabelings).
TARGET_LABELS = {"namespace", "pod", "node", "omegavlm", "instance", "job", "container", "service"}


def _panels() -> list[dict[str, Any]]:
    dash = json.loads(DASHBOARD.read_text())
    return [p for p in dash["panels"] if p["type"] != "row"]


def _exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p.get("targets", [])]


def _exported(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Sample names a registry exposes -> the label names known for them."""
    out: dict[str, set[str]] = {}
    labels_of: dict[str, set[str]] = {}
    for collector in list(registry._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            labels_of[collector._name] = set(collector._labelnames)
    for family in registry.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            name = family.name + suffix
            # Families built by custom collectors carry their label names even without samples.
            labels = set(labels_of.get(family.name, set())) | set(getattr(family, "_labelnames", ()))
            for sample in family.samples:
                labels |= set(sample.labels)
            if suffix == "_bucket":
                labels.add("le")
            out[name] = labels
    return out


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Everything omega_operator.metrics and omega_server.metrics export, imported for real."""
    from omega_operator import metrics as operator_metrics
    from omega_server.metrics import Metrics

    names: dict[str, set[str]] = {}
    names |= _exported(operator_metrics.REGISTRY)
    names |= _exported(Metrics().registry)
    return {k: v for k, v in names.items() if k.startswith("omega_")}


def test_dashboard_configmap() -> None:
    cm = one(render(), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["omega-vlm.json"])
    assert dash == json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "omega-vlm"
    assert not [d for d in render("--set", "dashboard.enabled=false") if d["kind"] == "ConfigMap"]


def test_dashboard_has_the_agreed_panels() -> None:
    titles = [p["title"].lower() for p in _panels()]
    for wanted in [
        "omegavlms by phase",
        "attention backend per omegavlm",
        "fallbacks",
        "request rate",
        "latency",
        "time to first token",
        "output tokens/s",
        "queue depth",
        "batch size",
        "gpu memory",
    ]:
        assert any(wanted in t for t in titles), f"no panel for {wanted!r}: {titles}"
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))
    for p in _panels():
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"


def test_every_queried_metric_exists_in_the_code(exported: dict[str, set[str]]) -> None:
    queried: set[str] = set()
    for expr in _exprs():
        metrics = set(re.findall(r"\b(omega_[a-z0-9_]+)\b", expr))
        assert metrics, expr
        queried |= metrics
        missing = metrics - set(exported)
        assert not missing, f"{expr}: not exported by omega_operator/omega_server metrics: {missing}"
        # Labels the query groups or filters by exist on the metric or come from the scrape target.
        used = set()
        for group in re.findall(r"by \(([^)]*)\)", expr):
            used |= {x.strip() for x in group.split(",") if x.strip()}
        used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
        known = set().union(*(exported[m] for m in metrics)) | TARGET_LABELS
        assert used <= known, f"{expr}: unknown labels {used - known}"
    # The dashboard covers both sides of the system.
    assert any(m.startswith("omega_operator_") for m in queried)
    assert any(m.startswith("omega_server_") for m in queried)


def test_the_contract_metrics_are_exported(exported: dict[str, set[str]]) -> None:
    """The metric names agreed in the team brief, as the code exports them."""
    for name, labels in {
        "omega_server_requests_total": {"status"},
        "omega_server_request_duration_seconds_bucket": {"le"},
        "omega_server_time_to_first_token_seconds_bucket": {"le"},
        "omega_server_output_tokens_total": set(),
        "omega_server_prompt_tokens_total": set(),
        "omega_server_queue_depth": set(),
        "omega_server_batch_size_bucket": {"le"},
        "omega_server_attention_info": {"backend", "requested"},
        "omega_server_flash_attn_load_failures_total": set(),
        "omega_server_gpu_memory_allocated_bytes": set(),
        "omega_operator_reconciles_total": {"result"},
        "omega_operator_reconcile_duration_seconds_bucket": {"le"},
        "omega_operator_health_probes_total": {"result"},
        "omega_operator_health_probe_duration_seconds_bucket": {"le"},
        "omega_operator_fallbacks_total": {"reason"},
        "omega_operator_omegavlms": {"phase"},
        "omega_operator_omegavlm_info": {"namespace", "name", "phase", "attention"},
    }.items():
        assert name in exported, name
        assert labels <= exported[name], (name, exported[name])
