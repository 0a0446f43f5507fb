"""Pure builders: spec -> Deployment, Service, PDB."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from omega_operator import builders as b
from omega_operator.api import parse_spec

OWNER = b.Owner(name="captioner", namespace="ml", uid="1234-uid")


def _env(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_example_deployment(example: dict[str, Any]) -> None:
    spec = parse_spec(example["spec"])
    dep = b.deployment(spec, OWNER, "flash")
    assert dep["apiVersion"] == "apps/v1" and dep["kind"] == "Deployment"
    meta = dep["metadata"]
    assert (meta["name"], meta["namespace"]) == ("captioner", "ml")
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "vlm.omega.io/v1alpha1",
            "kind": "OmegaVLM",
            "name": "captioner",
            "uid": "1234-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "omega-vlm-operator"
    assert meta["labels"]["app.kubernetes.io/instance"] == "captioner"
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "omega-vlm-server",
        "app.kubernetes.io/instance": "captioner",
    }
    c = _container(dep)
    assert c["image"] == "registry.example.com/omega-vlm-server:v0.1.0-flash"
    assert _env(dep) == {
        "ATTN_IMPL": "flash_attention_2",
        "MAX_BATCH_SIZE": "4",
        "MAX_MODEL_LENGTH": "8192",
        "DTYPE": "bfloat16",
        "MODEL_PATH": "/models/models/omega-17",
        "SERVED_MODEL_NAME": "omega-17-vl-exp",
        "PORT": "8000",
        "SHUTDOWN_TIMEOUT": "110",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }
    # ours first, the user's after (they may reference ours as $(VAR))
    assert [e["name"] for e in c["env"]][-1] == "PYTORCH_CUDA_ALLOC_CONF"
    assert c["resources"] == {
        "limits": {"memory": "96Gi", "nvidia.com/gpu": "1"},
        "requests": {"cpu": "4", "memory": "32Gi"},
    }
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    tpl = dep["spec"]["template"]
    assert tpl["metadata"]["labels"][b.VARIANT_LABEL] == "flash"
    assert tpl["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "8000"}


def test_image_variants(minimal_spec: dict[str, Any]) -> None:
    spec = parse_spec(minimal_spec)
    sdpa = b.deployment(spec, OWNER, "sdpa")
    assert _container(sdpa)["image"] == "reg.example/omega-vlm-server:v1-sdpa"
    assert _env(sdpa)["ATTN_IMPL"] == "sdpa"
    assert sdpa["spec"]["template"]["metadata"]["labels"][b.VARIANT_LABEL] == "sdpa"
    minimal_spec["attention"] = "flash_attention_2"
    minimal_spec["image"] = {"repository": "r/x", "flashImage": "r/x@sha256:aa", "sdpaImage": "r/x:s"}
    spec = parse_spec(minimal_spec)
    assert _container(b.deployment(spec, OWNER, "flash"))["image"] == "r/x@sha256:aa"
    assert _container(b.deployment(spec, OWNER, "sdpa"))["image"] == "r/x:s"


@pytest.mark.parametrize(
    ("uri", "model_path", "claim"),
    [
        ("pvc://models/omega-17", "/models/models/omega-17", "models"),
        ("pvc://weights", "/models/weights", "weights"),
        ("file:///mnt/m", "file:///mnt/m", None),
        ("hf://Qwen/Qwen2.5-VL-7B-Instruct@main", "hf://Qwen/Qwen2.5-VL-7B-Instruct@main", None),
    ],
)
def test_model_uri(minimal_spec: dict[str, Any], uri: str, model_path: str, claim: str | None) -> None:
    minimal_spec["model"]["uri"] = uri
    dep = b.deployment(parse_spec(minimal_spec), OWNER, "flash")
    assert _env(dep)["MODEL_PATH"] == model_path
    pod = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in _container(dep)["volumeMounts"]}
    assert vols["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    if claim:
        assert vols["model"]["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        assert mounts["model"]["readOnly"] is True
        assert model_path.startswith(mounts["model"]["mountPath"])
    else:
        assert "model" not in vols and "model" not in mounts


def test_placement_defaults_to_every_hopper_gpu(minimal_spec: dict[str, Any]) -> None:
    pod = b.deployment(parse_spec(minimal_spec), OWNER, "flash")["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.family", "operator": "In", "values": ["hopper"]}]}
    ]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in pod
    for key in ("runtimeClassName", "priorityClassName", "topologySpreadConstraints"):
        assert key not in pod


def test_selector_none_places_by_the_gpu_limit_only(minimal_spec: dict[str, Any]) -> None:
    minimal_spec["gpu"] = {"selector": "none", "count": 2}
    pod = b.deployment(parse_spec(minimal_spec), OWNER, "flash")["spec"]["template"]["spec"]
    assert "affinity" not in pod
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    # the user's own affinity is kept as given
    minimal_spec["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    pod = b.deployment(parse_spec(minimal_spec), OWNER, "flash")["spec"]["template"]["spec"]
    assert pod["affinity"] == minimal_spec["affinity"]


def test_runtime_and_priority_class_and_spread_pass_through(minimal_spec: dict[str, Any]) -> None:
    zone = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
    own = {**zone, "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"x": "y"}}}
    minimal_spec.update(
        runtimeClassName="nvidia", priorityClassName="gpu-high", topologySpreadConstraints=[zone, own]
    )
    pod = b.deployment(parse_spec(minimal_spec), OWNER, "flash")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia" and pod["priorityClassName"] == "gpu-high"
    assert pod["topologySpreadConstraints"] == [
        {**zone, "labelSelector": {"matchLabels": b.selector_labels("captioner")}},
        own,
    ]
    kubernetes_validate.validate(b.deployment(parse_spec(minimal_spec), OWNER, "flash"), "1.25", strict=True)


def test_user_placement_is_merged(minimal_spec: dict[str, Any]) -> None:
    minimal_spec.update(
        nodeSelector={"topology.kubernetes.io/zone": "a"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["a"]}]},
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["b"]}]},
                    ]
                }
            },
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
        },
        gpu={"products": ["NVIDIA-H100-PCIe"], "count": 2},
    )
    before = copy.deepcopy(minimal_spec)
    spec = parse_spec(minimal_spec)
    pod = b.deployment(spec, OWNER, "flash")["spec"]["template"]["spec"]
    assert minimal_spec == before  # pure: the input is untouched
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 2
    for term in terms:  # ours is ANDed into every OR-ed term
        assert term["matchExpressions"][-1] == {
            "key": "nvidia.com/gpu.product",
            "operator": "In",
            "values": ["NVIDIA-H100-PCIe"],
        }
    assert "podAntiAffinity" in pod["affinity"]
    assert pod["nodeSelector"] == {"topology.kubernetes.io/zone": "a"}
    assert len(pod["tolerations"]) == 2
    assert _container({"spec": {"template": {"spec": pod}}})["resources"]["limits"]["nvidia.com/gpu"] == "2"
    # the spec's own affinity object is not mutated either
    assert spec.affinity == before["affinity"]


def test_probes_and_security(minimal_spec: dict[str, Any]) -> None:
    minimal_spec["runtime"] = {"startupTimeoutSeconds": 3600}
    dep = b.deployment(parse_spec(minimal_spec), OWNER, "flash")
    c = _container(dep)
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/live"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    pod_sc = dep["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    # the image's own user (10001 owns its HOME and HF_HOME; a forced 1000 could not write them)
    assert "runAsUser" not in pod_sc and "runAsGroup" not in pod_sc and "runAsUser" not in sc
    assert pod_sc["fsGroup"] == 10001
    assert dep["spec"]["progressDeadlineSeconds"] > 3600


def test_shutdown_gives_streams_the_grace_period(minimal_spec: dict[str, Any]) -> None:
    dep = b.deployment(parse_spec(minimal_spec), OWNER, "flash")
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120
    assert _container(dep)["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert _env(dep)["SHUTDOWN_TIMEOUT"] == "110"  # the grace period less the hook and a margin
    minimal_spec["terminationGracePeriodSeconds"] = 900
    dep = b.deployment(parse_spec(minimal_spec), OWNER, "flash")
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    assert _env(dep)["SHUTDOWN_TIMEOUT"] == "890"


def test_service_and_pdb(example: dict[str, Any], minimal_spec: dict[str, Any]) -> None:
    spec = parse_spec(example["spec"])
    svc = b.service(spec, OWNER)
    assert svc["spec"]["selector"] == b.selector_labels("captioner")
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    pdb = b.pdb(spec, OWNER, "policy/v1beta1")
    assert pdb is not None and pdb["apiVersion"] == "policy/v1beta1"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": b.selector_labels("captioner")}}
    assert b.pdb(parse_spec(minimal_spec), OWNER, "policy/v1") is None  # one replica: no PDB


def test_children_validate_against_kubernetes_schemas(example: dict[str, Any]) -> None:
    spec = parse_spec(example["spec"])
    dep, svc, pdb = b.children(spec, OWNER, "flash", "policy/v1")
    assert pdb is not None
    for obj in (dep, svc, pdb):
        kubernetes_validate.validate(obj, "1.25", strict=True)


def test_builders_are_deterministic(example: dict[str, Any]) -> None:
    spec = parse_spec(example["spec"])
    assert b.children(spec, OWNER, "flash", "policy/v1") == b.children(spec, OWNER, "flash", "policy/v1")
