"""Pod discovery for devcluster's Prometheus: the targets ``kubernetes_sd_configs`` (role pod)
would give, read from the API server and kept up to date in a file_sd file.

Debian builds its ``prometheus`` package without Kubernetes service discovery (its NEWS.Debian:
"Kubernetes support has been completely removed"), so devcluster does that one part itself: it
lists pods with the Prometheus ServiceAccount's token (RBAC applies, as for a real Prometheus) and
writes one target per container port with the same ``__meta_kubernetes_*`` labels. Everything
after discovery is Prometheus's own: the PodMonitor's relabelling selects and labels the targets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import httpx

from devcluster.apiclient import Api, ApiError
from devcluster.monitors import sanitize

log = logging.getLogger("devcluster.podsd")

POLL_S = 1.0


def _ready(pod: dict[str, Any]) -> str:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "Unknown")).lower()
    return "unknown"


def pod_labels(pod: dict[str, Any]) -> dict[str, str]:
    """The pod-level ``__meta_kubernetes_*`` labels of Prometheus's pod discovery."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_ip": status.get("podIP", ""),
        "__meta_kubernetes_pod_ready": _ready(pod),
        "__meta_kubernetes_pod_phase": status.get("phase", ""),
        "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
        "__meta_kubernetes_pod_host_ip": status.get("hostIP", ""),
        "__meta_kubernetes_pod_uid": meta.get("uid", ""),
    }
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    if owner:
        labels["__meta_kubernetes_pod_controller_kind"] = owner.get("kind", "")
        labels["__meta_kubernetes_pod_controller_name"] = owner.get("name", "")
    for prefix, values in (("label", meta.get("labels")), ("annotation", meta.get("annotations"))):
        for key, value in (values or {}).items():
            name = sanitize(key)
            labels[f"__meta_kubernetes_pod_{prefix}_{name}"] = str(value)
            labels[f"__meta_kubernetes_pod_{prefix}present_{name}"] = "true"
    return labels


def pod_targets(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """file_sd entries of one pod: one per container port (the pod IP alone for a container
    without ports), each with the pod's and the port's labels; none while the pod has no IP."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return []
    common = pod_labels(pod)
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        base = {
            **common,
            "__meta_kubernetes_pod_container_name": c["name"],
            "__meta_kubernetes_pod_container_image": c.get("image", ""),
            "__meta_kubernetes_pod_container_init": "false",
        }
        if not c.get("ports"):
            out.append({"targets": [ip], "labels": base})
            continue
        for port in c["ports"]:
            labels = {
                **base,
                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
            }
            out.append({"targets": [f"{ip}:{port['containerPort']}"], "labels": labels})
    return out


def file_sd(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The file_sd content for ``pods`` (sorted, so that an unchanged cluster writes the same file)."""
    ordered = sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
    return [entry for pod in ordered for entry in pod_targets(pod)]


def write_if_changed(path: Path, content: list[dict[str, Any]], last: str | None) -> str:
    """Write ``content`` atomically when it differs from ``last`` (its JSON); return its JSON."""
    text = json.dumps(content, indent=1, sort_keys=True)
    if text != last:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text


def run(server: str, ca_file: Path, token_file: Path, out: Path, stop: threading.Event) -> None:
    """Until ``stop``: list the pods every second with the token in ``token_file`` and keep ``out`` current."""
    last: str | None = None
    token, api = "", None
    while True:
        try:
            fresh = token_file.read_text().strip()
            if fresh != token or api is None:
                if api is not None:
                    api.close()
                token, api = fresh, Api(server, fresh, str(ca_file))
            pods = api.get("/api/v1/pods").get("items") or []
            last = write_if_changed(out, file_sd(pods), last)
        except (ApiError, httpx.HTTPError, OSError) as e:
            log.warning("pod discovery: %s", e)
        if stop.wait(POLL_S):
            break
    if api is not None:
        with contextlib.suppress(Exception):
            api.close()
