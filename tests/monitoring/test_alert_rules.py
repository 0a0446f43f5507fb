"""The chart's alert rules (templates/prometheusrule.yaml): valid for promtool, each alert firing on
the series it is meant for and not on the others (promtool test rules, alert_rules_test.yml), and
OmegaVLMFlashAttentionDegraded firing for real in devcluster's Prometheus during the fallback."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import monitors
from devcluster.prometheus import binary
from tests.chart.helm import CHART, CI_VALUES, by_kind, render
from tests.monitoring.conftest import Run

HERE = Path(__file__).resolve().parent
ALERTS = {
    "OmegaVLMFlashAttentionDegraded",
    "OmegaVLMHealthNotProbed",
    "OmegaVLMNoReadyReplica",
    "OmegaVLMQueueSaturated",
}


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary("promtool")), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def _rules(*flags: str, values: Path | None = None) -> list[dict[str, Any]]:
    return by_kind(
        render("--set", "monitoring.prometheusRule.enabled=true", *flags, values=values), "PrometheusRule"
    )


def _write_rules(pr: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(monitors.rule_file(pr), sort_keys=False))
    return path


def test_off_by_default() -> None:
    assert by_kind(render(), "PrometheusRule") == []


def test_ci_monitoring_values_render_it_with_labels() -> None:
    values = next(p for p in CI_VALUES if p.name == "monitoring-values.yaml")
    (pr,) = by_kind(render(values=values), "PrometheusRule")
    assert pr["metadata"]["labels"]["release"] == "prometheus"
    assert pr["metadata"]["labels"]["app.kubernetes.io/part-of"] == "omega-vlm"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), ALERTS),
        (
            (
                "--set",
                "monitoring.prometheusRule.interval=30s",
                "--set",
                "monitoring.prometheusRule.additionalLabels.team=ml",
            ),
            ALERTS,
        ),
        (
            ("--set", "monitoring.prometheusRule.alerts.queueSaturated.enabled=false"),
            ALERTS - {"OmegaVLMQueueSaturated"},
        ),
    ],
    ids=["defaults", "interval-and-labels", "one-alert-off"],
)
def test_promtool_check_rules(flags: tuple[str, ...], expected: set[str], tmp_path: Path) -> None:
    (pr,) = _rules(*flags)
    path = _write_rules(pr, tmp_path / "rules.yml")
    proc = _promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(expected)} rules found" in proc.stdout, proc.stdout
    (group,) = pr["spec"]["groups"]
    assert {r["alert"] for r in group["rules"]} == expected
    for r in group["rules"]:
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert ("team" in r["labels"]) == ("monitoring.prometheusRule.additionalLabels.team=ml" in flags)
    assert group.get("interval") == ("30s" if "monitoring.prometheusRule.interval=30s" in flags else None)


def test_schema_refuses_bad_alert_values() -> None:
    from tests.chart.helm import run_helm

    for flag, message in [
        ("monitoring.prometheusRule.alerts.bogus.enabled=true", "Additional property bogus"),
        ("monitoring.prometheusRule.alerts.queueSaturated.for=soon", "for"),
        ("monitoring.prometheusRule.alerts.queueSaturated.depth=0", "depth"),
    ]:
        proc = run_helm("template", "x", str(CHART), "--set", flag, check=False)
        assert proc.returncode != 0, flag
        assert message in proc.stderr, proc.stderr


def test_promtool_unit_tests_of_every_alert(tmp_path: Path) -> None:
    """alert_rules_test.yml: each alert fires on its series (labels, annotations) and not on the others."""
    (pr,) = _rules()
    _write_rules(pr, tmp_path / "rules.yml")
    spec = yaml.safe_load((HERE / "alert_rules_test.yml").read_text())
    tested = {t["alertname"] for case in spec["tests"] for t in case["alert_rule_test"]}
    assert tested == ALERTS
    (tmp_path / "alert_rules_test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = _promtool("test", "rules", "alert_rules_test.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


def test_promtool_unit_tests_fail_on_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: the flash alert with a misspelt label fires no more."""
    (pr,) = _rules()
    for r in pr["spec"]["groups"][0]["rules"]:
        r["expr"] = r["expr"].replace(
            'requested=~"auto|flash_attention_2"', 'requestd=~"auto|flash_attention_2"'
        )
    _write_rules(pr, tmp_path / "rules.yml")
    (tmp_path / "alert_rules_test.yml").write_text((HERE / "alert_rules_test.yml").read_text())
    proc = _promtool("test", "rules", "alert_rules_test.yml", cwd=tmp_path)
    assert proc.returncode != 0 and "OmegaVLMFlashAttentionDegraded" in proc.stdout + proc.stderr


@pytest.mark.devcluster
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_devcluster_prometheus_loads_the_charts_rules_and_the_flash_alert_fired(monitored: Run) -> None:
    groups = monitored.prom.rules()
    loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert set(loaded) == ALERTS
    assert all(r["health"] == "ok" for r in loaded.values()), {
        n: r.get("lastError") for n, r in loaded.items()
    }
    # The rules Prometheus runs are the chart's, as helm renders them (same alerts, same delays).
    (pr,) = _rules()
    chart = {r["alert"]: r for g in pr["spec"]["groups"] for r in g["rules"]}
    assert set(chart) == set(loaded)
    assert loaded["OmegaVLMFlashAttentionDegraded"]["duration"] == 0
    assert (
        loaded["OmegaVLMQueueSaturated"]["duration"] == 300 and chart["OmegaVLMQueueSaturated"]["for"] == "5m"
    )
    # ALERTS has the firing alert for the test's OmegaVLM at some point of the fallback ...
    ns, name = monitored.namespace, monitored.name
    assert monitored.ovlm["status"]["attention"]["fallback"]["reason"] == "FlashAttentionLoadFailed"
    fired = monitored.prom.query_range(
        f'ALERTS{{alertname="OmegaVLMFlashAttentionDegraded", alertstate="firing", namespace="{ns}", omegavlm="{name}"}}',
        monitored.start,
        monitored.end,
        1,
    )
    assert len(fired) == 1, fired
    assert fired[0]["metric"]["severity"] == "warning"
    # ... while the flash pod ran sdpa in process, or the OmegaVLM's FlashAttentionDegraded condition
    # was True (the two series the rule reads).
    flash = monitored.prom.query_range(
        f'omega_server_attention_info{{namespace="{ns}", requested="flash_attention_2", backend="sdpa"}}',
        monitored.start,
        monitored.end,
        0.5,
    )
    assert flash, "the flash pod's in-process fallback was never scraped"
    degraded = monitored.prom.query_range(
        f'omega_operator_omegavlm_condition{{namespace="{ns}", name="{name}", type="FlashAttentionDegraded",'
        ' status="True"} == 1',
        monitored.start,
        monitored.end,
        0.5,
    )
    first_alert = min(float(t) for t, _ in fired[0]["values"])
    times = [float(t) for s in flash + degraded for t, _ in s["values"]]
    assert min(times) - 1 <= first_alert <= max(times) + 3, (first_alert, times)
