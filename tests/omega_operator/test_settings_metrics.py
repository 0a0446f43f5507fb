"""Typed settings from the environment, metric names (a cross-team contract), REST paths, CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omega_operator import metrics
from omega_operator.kube import ApiError, object_path
from omega_operator.settings import OperatorSettings
from prometheus_client import generate_latest


def test_settings_defaults() -> None:
    s = OperatorSettings()
    assert s.namespaces == [] and s.probe_interval == 10.0
    assert s.peering is None and s.health_probe_mode == "auto"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMEGA_OPERATOR_NAMESPACES", "ml, serving")
    monkeypatch.setenv("OMEGA_OPERATOR_PROBE_INTERVAL", "2.5")
    monkeypatch.setenv("OMEGA_OPERATOR_HEALTH_PROBE_MODE", "proxy")
    monkeypatch.setenv("OMEGA_OPERATOR_PEERING", "omega")
    s = OperatorSettings()
    assert s.namespaces == ["ml", "serving"] and s.probe_interval == 2.5
    assert s.health_probe_mode == "proxy" and s.peering == "omega"
    monkeypatch.setenv("OMEGA_OPERATOR_HEALTH_PROBE_MODE", "sideways")
    with pytest.raises(ValueError):
        OperatorSettings()


def test_metric_names() -> None:
    metrics.RECONCILES.labels("success").inc()
    metrics.HEALTH_PROBES.labels("ready").inc()
    metrics.FALLBACKS.labels("FlashAttentionLoadFailed").inc()
    metrics.observe_object("ns", "a", "Ready", "sdpa")
    metrics.observe_object("ns", "b", "Pending", None)
    text = generate_latest().decode()
    for name in (
        "omega_operator_reconciles_total",
        "omega_operator_reconcile_duration_seconds",
        "omega_operator_health_probes_total",
        "omega_operator_health_probe_duration_seconds",
        "omega_operator_refresh_period_seconds",
        "omega_operator_fallbacks_total",
        "omega_operator_omegavlms",
        "omega_operator_omegavlm_info",
    ):
        assert name in text, name
    assert 'omega_operator_omegavlms{phase="Ready"} 1.0' in text
    assert 'omega_operator_omegavlm_info{attention="sdpa",name="a",namespace="ns",phase="Ready"} 1.0' in text
    metrics.observe_object("ns", "a", "Degraded", "sdpa")  # replaces the series
    metrics.forget_object("ns", "b")
    text = generate_latest().decode()
    assert 'name="a",namespace="ns",phase="Ready"' not in text and 'name="b"' not in text
    assert 'omega_operator_omegavlms{phase="Degraded"} 1.0' in text
    metrics.forget_object("ns", "a")


def test_object_paths() -> None:
    assert object_path("apps/v1", "Deployment", "ml", "x") == "/apis/apps/v1/namespaces/ml/deployments/x"
    assert object_path("v1", "Service", "ml", "x") == "/api/v1/namespaces/ml/services/x"
    assert object_path("policy/v1beta1", "PodDisruptionBudget", "ml") == (
        "/apis/policy/v1beta1/namespaces/ml/poddisruptionbudgets"
    )
    assert object_path("vlm.omega.io/v1alpha1", "OmegaVLM", "ml", "x") == (
        "/apis/vlm.omega.io/v1alpha1/namespaces/ml/omegavlms/x"
    )
    assert (
        ApiError(0, "refused").transient and ApiError(503, "").transient and not ApiError(422, "").transient
    )


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "omega_operator", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "omega-vlm-operator" in out
