"""Every query of every panel of the shipped dashboard (charts/omega-vlm/dashboards/omega-vlm.json)
answered by a real Prometheus that scraped the demo's traffic on devcluster: the flash pod that
could not load flash-attn, the rollback to sdpa, chat completions. A label typo, a rate() on a
gauge or a legend naming a label the series lack fails here (tests/monitoring/dashboard_check.py);
the mutations below show that each of those faults is caught.
"""

from __future__ import annotations

import pytest

from tests.monitoring import dashboard_check as dc
from tests.monitoring.conftest import CHATS, Run

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

SCRAPE_S = 1.0  # TEST_PROMETHEUS's scrape interval
# Panels whose metric exists only on a GPU: the servers here run on CPU, where torch allocates no
# GPU memory and the server exports no series for it. Checked as far as CPU allows (below).
NEEDS_GPU = {"GPU memory allocated"}


def _window(run: Run) -> dc.Window:
    step = 2.0  # Grafana's $__interval for this short range
    rate = max(step + SCRAPE_S, 4 * SCRAPE_S)  # Grafana's $__rate_interval
    return dc.Window(run.start, run.end, step, f"{rate:g}s")


def _variables(run: Run) -> dict[str, str]:
    # $namespace is the namespace variable (label_values of omega_operator_omegavlm_info); the
    # test's own namespace, not ".*", so a matcher on a misspelt label matches nothing.
    return {"namespace": run.namespace, "datasource": "prometheus"}


def test_dashboard_has_queries_on_both_sides() -> None:
    qs = dc.queries(dc.load())
    assert len(qs) >= 20, [q.name for q in qs]
    assert any("omega_operator_" in q.expr for q in qs) and any("omega_server_" in q.expr for q in qs)
    assert {q.panel for q in qs} >= NEEDS_GPU  # the exemption names a real panel


def test_namespace_variable_lists_the_test_namespace(monitored: Run) -> None:
    """The dashboard's $namespace variable query (label_values of its metric) offers our namespace."""
    var = next(v for v in dc.load()["templating"]["list"] if v["name"] == "namespace")
    metric, label = var["definition"].removeprefix("label_values(").removesuffix(")").split(", ")
    values = {s["metric"].get(label) for s in monitored.prom.query(metric)}
    assert monitored.namespace in values, values


def test_every_panel_query_returns_series(monitored: Run) -> None:
    w, variables = _window(monitored), _variables(monitored)
    problems = {}
    checked = 0
    for q in dc.queries(dc.load()):
        if q.panel in NEEDS_GPU:
            continue
        checked += 1
        found = dc.check(monitored.prom, q, variables, w)
        if found:
            problems[q.name] = found
    assert checked >= 20
    assert not problems, "\n".join(f"{name}:\n  " + "\n  ".join(p) for name, p in problems.items())


def test_gpu_only_panels_are_valid_queries_on_a_known_gauge(monitored: Run) -> None:
    """What CPU allows for the GPU panels: the query parses and runs, its metric was scraped (TYPE
    gauge, from every server pod), and it reads no counter function."""
    w, metadata = _window(monitored), monitored.prom.metadata()
    for q in dc.queries(dc.load()):
        if q.panel not in NEEDS_GPU:
            continue
        expr = dc.substitute(q.expr, {**_variables(monitored), "__rate_interval": w.rate_interval})
        assert monitored.prom.query_range(expr, w.start, w.end, w.step) == []  # runs; no GPU here
        for name in dc.metric_names(expr):
            assert dc.metric_type(name, metadata) == ("gauge", ""), name
        assert dc.type_problems(expr, metadata) == []


@pytest.mark.parametrize(
    ("panel", "old", "new", "fault"),
    [
        # a misspelt label in a matcher: no series
        ("Request rate", 'namespace=~"$namespace"', 'namspace=~"$namespace"', "no series"),
        # a misspelt label in a grouping: still a series, but the label is on no metric
        ("Fallbacks flash-attn -> SDPA", "by (reason)", "by (reasn)", "label 'reasn'"),
        # the legend names a label the result does not carry
        ("Queue depth", "{{namespace}}/{{pod}}", "{{namespace}}/{{pods}}", "legend {{pods}}"),
        # rate() of a gauge: Prometheus answers (0), the metric's TYPE says it is a gauge
        (
            "Queue depth",
            '(omega_server_queue_depth{namespace=~"$namespace"})',
            '(rate(omega_server_queue_depth{namespace=~"$namespace"}[$__rate_interval]))',
            "a gauge",
        ),
        # histogram_quantile over a counter
        (
            "Time to first token",
            "omega_server_time_to_first_token_seconds_bucket",
            "omega_server_output_tokens_total",
            "histogram_quantile",
        ),
        # a metric that is not exported
        (
            "Output tokens/s",
            "omega_server_output_tokens_total",
            "omega_server_output_token_total",
            "no series",
        ),
    ],
)
def test_the_check_catches_faults(monitored: Run, panel: str, old: str, new: str, fault: str) -> None:
    """Each fault, put into one real panel's query, is reported; the unchanged query passes."""
    q = next(q for q in dc.queries(dc.load()) if q.panel == panel)
    assert old in q.expr or old in q.legend, (old, q)
    w, variables = _window(monitored), _variables(monitored)
    assert dc.check(monitored.prom, q, variables, w) == []
    expr, legend = q.expr.replace(old, new), q.legend.replace(old, new)
    broken = dc.Query(q.panel, q.ref, expr, legend, q.instant)
    problems = dc.check(monitored.prom, broken, variables, w)
    assert any(fault in p for p in problems), problems


def test_the_fallback_in_the_sre_series(monitored: Run) -> None:
    """What the new series say about the demo's run: one fleet rollback, the OmegaVLM back to one
    Ready replica of one asked for, the sdpa pod's info, every chat timed end to end."""
    prom, ns, name, end = monitored.prom, monitored.namespace, monitored.name, monitored.end

    def value(expr: str) -> float:
        result = prom.query(expr, at=end)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    assert value('omega_operator_rollbacks_total{scope="fleet"}') >= 1
    assert value('omega_operator_rollbacks_total{scope="node"}') == 0
    assert value(f'omega_operator_omegavlm_ready_replicas{{namespace="{ns}", name="{name}"}}') == 1
    assert value(f'omega_operator_omegavlm_replicas{{namespace="{ns}", name="{name}"}}') == 1
    ready = (
        f'omega_operator_omegavlm_condition{{namespace="{ns}", name="{name}", type="Ready", status="True"}}'
    )
    assert value(ready) == 1
    info = prom.query(f'omega_server_info{{namespace="{ns}", attention_backend="sdpa"}}', at=end)
    assert info and all(s["metric"]["decode_path"] == "dynamic" for s in info), info  # CPU: dynamic cache
    assert value(f'sum(omega_server_e2e_request_latency_seconds_count{{namespace="{ns}"}})') >= CHATS
    assert value(f'sum(omega_server_requests_running{{namespace="{ns}"}})') == 0
