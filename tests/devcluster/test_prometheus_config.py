"""devcluster's Prometheus configuration without a cluster: the chart's monitors translated into
scrape jobs (devcluster/monitors.py), pods into the targets Kubernetes discovery would give
(devcluster/podsd.py), and the whole prometheus.yml accepted by `promtool check config`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import helm, monitors, podsd
from devcluster import prometheus as prom


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    """The chart's PodMonitor, ServiceMonitor and PrometheusRule as devcluster renders them."""
    path = helm.default_path()
    if helm.installed_version(path) != helm.HELM_VERSION:
        helm.install(path)
    return monitors.render(path)


def _pod(name: str = "captioner-abc", ip: str | None = "127.42.1.7", **labels: str) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    if ip:
        status["podIP"] = ip
        status["hostIP"] = "127.42.0.1"
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": "u-1",
            "labels": labels
            or {"app.kubernetes.io/name": "omega-vlm-server", "app.kubernetes.io/instance": "captioner"},
            "annotations": {"vlm.omega.io/variant": "sdpa"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "captioner-5d8", "controller": True}],
        },
        "spec": {
            "nodeName": "h100-sxm-0",
            "containers": [
                {
                    "name": "server",
                    "image": "r/omega-vlm-server:v1-sdpa",
                    "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                },
                {"name": "sidecar", "image": "busybox"},
            ],
        },
        "status": status,
    }


def test_pod_targets_carry_kubernetes_discovery_labels() -> None:
    server, sidecar = podsd.pod_targets(_pod())
    assert server["targets"] == ["127.42.1.7:8000"] and sidecar["targets"] == ["127.42.1.7"]
    labels = server["labels"]
    assert labels["__meta_kubernetes_namespace"] == "ml"
    assert labels["__meta_kubernetes_pod_name"] == "captioner-abc"
    assert labels["__meta_kubernetes_pod_ready"] == "true"
    assert labels["__meta_kubernetes_pod_phase"] == "Running"
    assert labels["__meta_kubernetes_pod_node_name"] == "h100-sxm-0"
    assert labels["__meta_kubernetes_pod_controller_kind"] == "ReplicaSet"
    # label names sanitised as Prometheus does; a "present" label beside each
    assert labels["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "omega-vlm-server"
    assert labels["__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name"] == "true"
    assert labels["__meta_kubernetes_pod_annotation_vlm_omega_io_variant"] == "sdpa"
    assert labels["__meta_kubernetes_pod_container_port_name"] == "http"
    assert labels["__meta_kubernetes_pod_container_port_number"] == "8000"
    assert "__meta_kubernetes_pod_container_port_name" not in sidecar["labels"]
    assert all(isinstance(v, str) for v in labels.values())


def test_a_pod_without_an_ip_has_no_target_and_files_are_stable() -> None:
    assert podsd.pod_targets(_pod(ip=None)) == []
    pods = [_pod("b"), _pod("a"), _pod("c", ip=None)]
    content = podsd.file_sd(pods)
    assert [e["labels"]["__meta_kubernetes_pod_name"] for e in content] == ["a", "a", "b", "b"]
    assert podsd.file_sd(list(reversed(pods))) == content


def test_write_if_changed(tmp_path: Path) -> None:
    out = tmp_path / "pods.json"
    first = podsd.write_if_changed(out, podsd.file_sd([_pod()]), None)
    mtime = out.stat().st_mtime_ns
    assert podsd.write_if_changed(out, podsd.file_sd([_pod()]), first) == first
    assert out.stat().st_mtime_ns == mtime
    assert json.loads(out.read_text()) == podsd.file_sd([_pod()])


def test_podmonitor_job_selects_like_prometheus_operator(docs: list[dict[str, Any]]) -> None:
    (pm,) = monitors.of_kind(docs, "PodMonitor")
    (job,) = monitors.podmonitor_jobs(pm, pods_file=Path("/x/pods.json"), interval="1s")
    assert job["job_name"] == "podMonitor/omega-system/omega-vlm-servers/0"
    assert job["metrics_path"] == "/metrics" and job["scrape_interval"] == job["scrape_timeout"] == "1s"
    assert job["file_sd_configs"] == [{"files": ["/x/pods.json"], "refresh_interval": "5s"}]
    rules = job["relabel_configs"]
    assert rules[0] == {
        "action": "keep",
        "source_labels": [
            "__meta_kubernetes_pod_label_app_kubernetes_io_name",
            "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name",
        ],
        "regex": "(omega-vlm-server);true",
    }
    assert {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_container_port_name"],
        "regex": "http",
    } in rules
    targets = {r.get("target_label"): r for r in rules if r.get("target_label")}
    assert targets["job"]["replacement"] == "omega-system/omega-vlm-servers"
    # the chart's own relabelings come last, translated from camelCase
    assert rules[-2:] == [
        {
            "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "target_label": "omegavlm",
        },
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
    ]
    # cluster-wide: no namespace restriction
    assert not any(
        r.get("source_labels") == ["__meta_kubernetes_namespace"] and r.get("action") == "keep" for r in rules
    )


def test_namespaced_podmonitor_and_selector_expressions() -> None:
    pm = {
        "metadata": {"name": "pm", "namespace": "mon"},
        "spec": {
            "selector": {
                "matchLabels": {"a.b/c": "x.y"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["gpu", "cpu"]},
                    {"key": "skip", "operator": "DoesNotExist"},
                ],
            },
            "namespaceSelector": {"matchNames": ["team-a", "team-b"]},
            "podMetricsEndpoints": [
                {"targetPort": 9100, "relabelings": [{"action": "Drop", "sourceLabels": ["x"]}]}
            ],
        },
    }
    (job,) = monitors.podmonitor_jobs(pm, pods_file=Path("/p.json"), interval="2s")
    rules = job["relabel_configs"]
    assert rules[0]["regex"] == r"(x\.y);true"
    assert rules[1] == {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_label_tier", "__meta_kubernetes_pod_labelpresent_tier"],
        "regex": "(gpu|cpu);true",
    }
    assert rules[2] == {
        "action": "drop",
        "source_labels": ["__meta_kubernetes_pod_labelpresent_skip"],
        "regex": "true",
    }
    assert {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_namespace"],
        "regex": "team-a|team-b",
    } in rules
    assert {
        "action": "keep",
        "source_labels": ["__meta_kubernetes_pod_container_port_number"],
        "regex": "9100",
    } in rules
    assert rules[-1] == {"action": "drop", "source_labels": ["x"]}
    with pytest.raises(ValueError, match="Near"):
        monitors.podmonitor_jobs(
            {
                **pm,
                "spec": {**pm["spec"], "selector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}},
            },
            pods_file=Path("/p.json"),
            interval="1s",
        )


def test_servicemonitor_job_and_the_operator_entry(docs: list[dict[str, Any]]) -> None:
    (sm,) = monitors.of_kind(docs, "ServiceMonitor")
    (job,) = monitors.servicemonitor_jobs(sm, targets_glob="/t/*.json", interval="1s")
    assert job["honor_labels"] is True  # the chart's: omegavlm_info keeps the OmegaVLM's namespace
    entry = monitors.operator_entry("127.0.0.1:9000")
    labels = entry["labels"]
    # every selector label of the ServiceMonitor is on the stand-in entry
    for key, value in sm["spec"]["selector"]["matchLabels"].items():
        assert labels[f"__meta_kubernetes_service_label_{monitors.sanitize(key)}"] == value
    assert labels["__meta_kubernetes_endpoint_port_name"] == sm["spec"]["endpoints"][0]["port"]
    assert labels["__meta_kubernetes_namespace"] == sm["metadata"]["namespace"]


def test_config_round_trip_and_promtool_check_config(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    cfg = prom.TEST_PROMETHEUS
    assert prom.PrometheusConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    files = prom.Files.of(tmp_path)
    config, rules = prom.render_config(cfg, files, docs)
    assert config["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert list(rules) == ["omega-vlm.yml"] and config["rule_files"] == [str(files.rules / "omega-vlm.yml")]
    assert [j["job_name"].split("/")[0] for j in config["scrape_configs"]] == ["podMonitor", "serviceMonitor"]
    for d in (files.rules, files.targets, files.pods.parent):
        d.mkdir(parents=True)
    files.rules.joinpath("omega-vlm.yml").write_text(yaml.safe_dump(rules["omega-vlm.yml"]))
    files.pods.write_text(json.dumps(podsd.file_sd([_pod()])))
    files.targets.joinpath("op.json").write_text(json.dumps([monitors.operator_entry("127.0.0.1:9000")]))
    files.config.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [str(prom.binary("promtool")), "check", "config", str(files.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    # without rules
    config, rules = prom.render_config(prom.PrometheusConfig(rules=False), files, docs)
    assert rules == {} and config["rule_files"] == []


def test_prometheus_identity_may_only_read_pods() -> None:
    objs = dict(prom.rbac_objects())
    role = objs["/apis/rbac.authorization.k8s.io/v1/clusterroles"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = objs["/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
    ]


def test_add_target_needs_a_prometheus(tmp_path: Path) -> None:
    entry = monitors.operator_entry("127.0.0.1:9")
    assert prom.add_target(tmp_path, "op", entry) is False
    prom.Files.of(tmp_path).targets.mkdir(parents=True)
    assert prom.add_target(tmp_path, "op", entry) is True
    assert json.loads((prom.Files.of(tmp_path).targets / "op.json").read_text()) == [entry]
    prom.remove_target(tmp_path, "op")
    assert not (prom.Files.of(tmp_path).targets / "op.json").exists()


def test_rendering_without_helm_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="make setup"):
        monitors.render(tmp_path / "no-helm")
