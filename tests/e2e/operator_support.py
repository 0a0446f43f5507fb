"""Helpers for the operator end-to-end tests (issue 4): API write counting, PVC fixtures,
invalid-manifest catalogue. Shared process/manifest helpers come from fallback_support."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

import yaml

from devcluster import Cluster

REPO = Path(__file__).resolve().parents[2]
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "CREATE", "UPDATE", "DELETE"}
# What the operator writes. Deployment/PDB status belongs to the controller manager; pods and
# events are written by the kubelet and controllers too, so they are not counted here.
OPERATOR_RESOURCES = {
    ("omegavlms", ""),
    ("omegavlms", "status"),
    ("deployments", ""),
    ("services", ""),
    ("poddisruptionbudgets", ""),
}
_METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def api_writes(cluster: Cluster) -> int:
    """Write requests the API server has answered so far for the operator's resources.

    Read from the API server's own request counter (`apiserver_request_total` on /metrics), so
    no-op writes count too: a server-side apply that changes nothing is still a request.
    """
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        if labels.get("verb") in WRITE_VERBS and (labels.get("resource"), labels.get("subresource", "")) in (
            OPERATOR_RESOURCES
        ):
            total += float(m.group("value"))
    return int(total)


def wait_settled(cluster: Cluster, quiet_s: float, timeout: float) -> int:
    """Wait until no operator write happened for `quiet_s` seconds; return the write count then."""
    deadline = time.monotonic() + timeout
    last = api_writes(cluster)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = api_writes(cluster)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    raise TimeoutError(f"operator writes did not settle within {timeout:.0f}s (last count {last})")


def example(namespace: str) -> dict[str, Any]:
    """examples/omegavlm.yaml, moved into `namespace`."""
    doc = yaml.safe_load((REPO / "examples" / "omegavlm.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    return dict(doc)


def model_pvc(cluster: Cluster, namespace: str, claim: str = "models") -> None:
    """A PVC pre-bound to a hostPath PV (devcluster runs no volume binder controller)."""
    pv = f"{namespace}-{claim}"
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadOnlyMany"],
                    "hostPath": {"path": "/tmp"},
                    "storageClassName": "",
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": claim,
                    "namespace": namespace,
                    "annotations": {"pv.kubernetes.io/bind-completed": "yes"},
                },
                "spec": {
                    "accessModes": ["ReadOnlyMany"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": "",
                    "volumeName": pv,
                },
            },
        ]
    )


def base_spec(repository: str) -> dict[str, Any]:
    """A small valid spec: no pods (replicas 0) unless a test asks for them."""
    return {
        "model": {"name": "tiny", "uri": "file:///models/tiny"},
        "replicas": 0,
        "image": {"repository": repository, "tag": "v1"},
    }


def manifest(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "vlm.omega.io/v1alpha1",
        "kind": "OmegaVLM",
        "metadata": {"name": name, "namespace": namespace},
        "spec": copy.deepcopy(spec),
    }


# (id, change to base_spec, the field the refusal or InvalidSpec message must name)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("negative-replicas", {"replicas": -1}, "spec.replicas"),
    ("batch-zero", {"runtime": {"maxBatchSize": 0}}, "spec.runtime.maxBatchSize"),
    ("batch-too-big", {"runtime": {"maxBatchSize": 4096}}, "spec.runtime.maxBatchSize"),
    ("model-length-small", {"runtime": {"maxModelLength": 100}}, "spec.runtime.maxModelLength"),
    ("gpu-count-9", {"gpu": {"count": 9}}, "spec.gpu.count"),
    ("no-products", {"gpu": {"products": []}}, "spec.gpu.products"),
    ("attention-enum", {"attention": "xformers"}, "spec.attention"),
    ("dtype-enum", {"runtime": {"dtype": "int4"}}, "spec.runtime.dtype"),
    ("uri-scheme", {"model": {"name": "m", "uri": "s3://bucket/m"}}, "spec.model.uri"),
    ("no-model-name", {"model": {"uri": "file:///m"}}, "spec.model.name"),
    ("service-port", {"service": {"port": 70000}}, "spec.service.port"),
    ("crashloop-zero", {"fallback": {"crashLoopRestarts": 0}}, "spec.fallback.crashLoopRestarts"),
    ("replicas-string", {"replicas": "two"}, "spec.replicas"),
    # cross-field rules: CEL on new clusters, the operator on every cluster (1.20 ignores CEL)
    ("reserved-env", {"env": [{"name": "ATTN_IMPL", "value": "eager"}]}, "spec.env[0].name"),
    ("no-tag-no-images", {"image": {"repository": "r.example/omega-vlm-server"}}, "spec.image.tag"),
    ("gpu-in-resources", {"resources": {"limits": {"nvidia.com/gpu": 2}}}, "spec.resources.limits"),
    ("product-in-node-selector", {"nodeSelector": {"nvidia.com/gpu.product": "X"}}, "spec.nodeSelector"),
    ("products-with-selector-none", {"gpu": {"selector": "none", "products": ["X"]}}, "spec.gpu.products"),
    (
        "cache-with-file-uri",
        {"model": {"name": "m", "uri": "file:///m", "cache": {"claimName": "w"}}},
        "spec.model.cache",
    ),
    (
        "cache-claim-and-size",
        {"model": {"name": "m", "uri": "hf://o/m", "cache": {"claimName": "w", "size": "1Gi"}}},
        "spec.model.cache",
    ),
    (
        "env-value-and-value-from",
        {"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        "spec.env[0].valueFrom",
    ),
]


def ovlm_events(cluster: Cluster, namespace: str, reason: str | None = None) -> list[dict[str, Any]]:
    """Events about OmegaVLMs (not about pods or ReplicaSets) in the namespace, oldest first."""
    import json

    items = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    out = [
        e
        for e in items
        if e["involvedObject"].get("kind") == "OmegaVLM" and (reason is None or e.get("reason") == reason)
    ]
    return sorted(out, key=lambda e: e.get("firstTimestamp") or "")
