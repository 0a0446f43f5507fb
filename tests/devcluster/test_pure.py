"""Unit tests of devcluster's pure parts: image map, env resolution, pod phase, apt sources."""

from __future__ import annotations

import base64

import pytest

from devcluster import aptsource, images, podenv
from devcluster.nodes import DEFAULT_NODES, node_labels, node_object
from devcluster.podstatus import ContainerView, pod_phase, tail_message


def test_image_map_matches_repository_suffix_any_registry_and_tag() -> None:
    entries = images.default_entries()
    for image in (
        "omega-vlm-server",
        "registry.example.com/omega-vlm-server:v0.1.0-flash",
        "localhost:5000/team/omega-vlm-server@sha256:abc",
    ):
        entry = images.resolve(entries, image)
        assert entry is not None and entry.command[-2:] == ("-m", "omega_server"), image
    assert images.resolve(entries, "registry.example.com/not-omega-vlm-server:1") is None
    assert images.resolve(entries, "busybox") is None


def test_image_map_prefers_exact_image_then_longest_suffix() -> None:
    entries = [
        images.ImageEntry("omega-vlm-server", ("a",)),
        images.ImageEntry("team/omega-vlm-server", ("b",)),
        images.ImageEntry("r.io/team/omega-vlm-server:v1-sdpa", ("c",)),
    ]
    assert images.resolve(entries, "r.io/team/omega-vlm-server:v1-sdpa").command == ("c",)  # type: ignore[union-attr]
    assert images.resolve(entries, "r.io/team/omega-vlm-server:v1-flash").command == ("b",)  # type: ignore[union-attr]
    assert images.resolve(entries, "r.io/other/omega-vlm-server:v1").command == ("a",)  # type: ignore[union-attr]


def _pod() -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
        "spec": {"nodeName": "h100-sxm-0"},
    }


def test_env_resolution_like_a_kubelet() -> None:
    cms = {("ns", "cfg"): {"A": "1", "B": "2"}}
    secrets = {("ns", "sec"): {"TOKEN": base64.b64encode(b"s3cret").decode()}}
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CM_"}],
        "env": [
            {"name": "PLAIN", "value": "v"},
            {"name": "EXPANDED", "value": "$(PLAIN)-$(CM_A)-$(MISSING)-$$"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "B"}}},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "TOKEN"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        ],
        "args": ["--ip", "$(POD_IP)"],
    }
    env = podenv.container_env(
        _pod(),
        container,
        image_env={"IMG": "i", "PLAIN": "image"},
        pod_ip="127.9.1.1",
        host_ip="127.9.0.1",
        configmaps=lambda ns, n: cms.get((ns, n)),
        secrets=lambda ns, n: secrets.get((ns, n)),
    )
    assert env["IMG"] == "i" and env["PLAIN"] == "v"
    assert env["CM_A"] == "1" and env["FROM_CM"] == "2"
    assert env["EXPANDED"] == "v-1-$(MISSING)-$"
    assert env["POD_IP"] == "127.9.1.1" and env["APP"] == "x"
    assert env["FROM_SECRET"] == "s3cret"
    assert "OPT" not in env
    assert podenv.command_line(("srv",), container, env) == ["srv", "--ip", "127.9.1.1"]


def test_env_missing_configmap_is_a_config_error() -> None:
    container = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}],
    }
    with pytest.raises(podenv.ContainerConfigError, match='configmap "gone" not found'):
        podenv.container_env(
            _pod(),
            container,
            image_env={},
            pod_ip="",
            host_ip="",
            configmaps=lambda *_: None,
            secrets=lambda *_: None,
        )


def _c(state: dict, last: dict | None = None) -> ContainerView:
    return ContainerView(name="c", image="i", state=state, last_state=last or {})


def test_pod_phase() -> None:
    crashed = {"terminated": {"exitCode": 1}}
    assert pod_phase("Always", [_c({"waiting": {"reason": "ErrImagePull"}})]) == "Pending"
    assert pod_phase("Always", [_c({"running": {}})]) == "Running"
    assert pod_phase("Always", [_c({"waiting": {"reason": "CrashLoopBackOff"}}, crashed)]) == "Running"
    assert pod_phase("Never", [_c(crashed)]) == "Failed"
    assert pod_phase("OnFailure", [_c({"terminated": {"exitCode": 0}})]) == "Succeeded"


def test_fallback_to_logs_message_is_the_tail() -> None:
    log = b"".join(f"line {i}\n".encode() for i in range(200)) + b"fatal: MODEL_PATH missing\n"
    msg = tail_message(log)
    assert msg.endswith("fatal: MODEL_PATH missing\n")
    assert len(msg.encode()) <= 2048 and msg.count("\n") <= 80


def test_default_nodes_have_gfd_labels_and_gpu_taints() -> None:
    by_name = {n.name: n for n in DEFAULT_NODES}
    h100 = node_labels(by_name["h100-sxm-0"])
    assert h100["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert h100["nvidia.com/gpu.family"] == "hopper" and h100["nvidia.com/gpu.compute.major"] == "9"
    assert h100["nvidia.com/gpu.memory"] == "81559"
    h200 = node_labels(by_name["h200-0"])
    assert (h200["nvidia.com/gpu.product"], h200["nvidia.com/gpu.family"]) == ("NVIDIA-H200", "hopper")
    assert (h200["nvidia.com/gpu.compute.major"], h200["nvidia.com/gpu.memory"]) == ("9", "143771")
    assert h200["nvidia.com/gpu.count"] == "8"
    assert "nvidia.com/gpu.product" not in node_labels(by_name["cpu-0"])
    assert node_object(by_name["a100-0"])["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    assert node_object(by_name["cpu-0"])["spec"]["taints"] == []


def test_private_sources_list_comes_from_the_machines_deb822_file() -> None:
    text = (
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /k.gpg\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n"
    )
    out = aptsource.render_deb_src(aptsource.parse_deb822(text), "bookworm")
    assert out.splitlines() == [
        "deb-src [signed-by=/k.gpg] http://mirror.invalid/debian bookworm main",
        "deb-src [signed-by=/k.gpg] http://mirror.invalid/debian bookworm-updates main",
        "deb-src http://mirror.invalid/debian-security bookworm-security main",
    ]
    with pytest.raises(RuntimeError):
        aptsource.render_deb_src(aptsource.parse_deb822(text), "trixie")
