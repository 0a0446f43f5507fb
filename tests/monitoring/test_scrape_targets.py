"""What devcluster's Prometheus scrapes, and how it found it: the server pods the chart's PodMonitor
selects (discovered through the API server with the Prometheus ServiceAccount's token), labelled as
prometheus-operator labels them; not a pod the selector leaves out; the operator process through
its ServiceMonitor stand-in; and the demo's Prometheus output."""

from __future__ import annotations

import json

import pytest

from devcluster import demo, demo_prometheus, monitors
from devcluster import prometheus as prom
from devcluster.apiclient import Api, ApiError
from tests.monitoring.conftest import Run

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

SERVER_JOB = f"{monitors.RELEASE_NAMESPACE}/{monitors.RELEASE}-servers"


def test_server_pod_targets_have_the_podmonitor_labels(monitored: Run) -> None:
    targets = [t for t in monitored.prom.targets() if t["labels"].get("job") == SERVER_JOB]
    live = [t for t in targets if t["labels"]["namespace"] == monitored.namespace]
    assert live, monitored.prom.targets()
    for t in live:
        labels = t["labels"]
        assert labels["omegavlm"] == monitored.name and labels["node"] == "h100-sxm-0"
        assert labels["container"] == "server" and labels["endpoint"] == "http"
        assert labels["pod"].startswith(f"{monitored.name}-") and labels["instance"].endswith(":8000")
    pods = monitored.cluster.get(
        "pods", "-n", monitored.namespace, "-l", f"app.kubernetes.io/instance={monitored.name}"
    )
    running = {p["metadata"]["name"] for p in pods["items"] if p["status"].get("phase") == "Running"}
    assert {t["labels"]["pod"] for t in live} == running
    assert all(t["health"] == "up" for t in live), [(t["labels"]["pod"], t["lastError"]) for t in live]


def test_a_pod_the_selector_leaves_out_is_discovered_but_not_scraped(monitored: Run) -> None:
    discovered = json.loads(prom.Files.of(monitored.cluster.state_dir).pods.read_text())
    names = {e["labels"]["__meta_kubernetes_pod_name"] for e in discovered}
    assert "other-app" in names  # it has a port named http ...
    scraped = {t["labels"].get("pod") for t in monitored.prom.targets()}
    assert "other-app" not in scraped  # ... but not app.kubernetes.io/name=omega-vlm-server


def test_discovery_uses_a_token_that_may_read_pods_only(monitored: Run) -> None:
    c = monitored.cluster
    token = prom.Files.of(c.state_dir).token.read_text().strip()
    api = Api(c.server, token, str(c.layout.pki / "ca.crt"))
    try:
        assert api.get("/api/v1/pods")["items"]
        with pytest.raises(ApiError) as err:
            api.get(f"/api/v1/namespaces/{monitored.namespace}/secrets")
        assert err.value.status == 403
    finally:
        api.close()


def test_the_operator_is_scraped_as_its_servicemonitor_would(monitored: Run) -> None:
    (op,) = [t for t in monitored.prom.targets() if t["labels"].get("job") == monitors.OPERATOR_SERVICE]
    assert op["health"] == "up", op["lastError"]
    assert op["labels"]["endpoint"] == "metrics" and op["labels"]["namespace"] == monitors.RELEASE_NAMESPACE
    # honorLabels: the OmegaVLM's namespace from the operator's own series wins over the target's
    (info,) = monitored.prom.query(f'omega_operator_omegavlm_info{{name="{monitored.name}"}}')
    assert info["metric"]["namespace"] == monitored.namespace
    assert info["metric"]["attention"] == "sdpa" and info["metric"]["phase"] == "Ready"


def test_the_demo_shows_the_fallback_from_prometheus(
    monitored: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    demo_prometheus.show_fallback(monitored.cluster, monitored.namespace, monitored.name)
    out = capsys.readouterr().out
    assert "backend=sdpa requested=flash_attention_2" in out, out  # the flash pod, fallen back in process
    assert "backend=sdpa requested=sdpa" in out, out  # the pod of the sdpa variant
    assert "reason=FlashAttentionLoadFailed" in out, out
    assert f"alertname={demo_prometheus.ALERT} namespace={monitored.namespace}" in out, out
    text = demo.usage(monitored.cluster)
    assert f"{monitored.cluster.prometheus_url}/graph" in text
    # every query the demo tells the user to paste answers with data
    for query, _what in demo.QUERIES:
        assert query in text
        # the alert fired during the fallback (the graph tab shows when); now it may be over
        expr = f"max_over_time({query}[15m])" if query.startswith("ALERTS") else query
        assert monitored.prom.query(expr), expr
