"""A container's environment and command line, resolved the way a kubelet does (pure functions).

Sources, later ones winning: the image's env, ``envFrom`` (configMapRef/secretRef, with prefix),
``env`` (value with $(VAR) expansion, fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

Lookup = Callable[[str, str], dict[str, str] | None]  # (namespace, name) -> data, None when missing

# Host environment a container process inherits (a container sees none of the host's; a local
# process needs at least these to run, and OMP_NUM_THREADS keeps tiny models fast on small machines).
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
PASSTHROUGH_PREFIXES = ("HF_", "TRANSFORMERS_")

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)|\$\$")


class ContainerConfigError(Exception):
    """The container cannot be configured yet (missing ConfigMap/Secret/key): CreateContainerConfigError."""


def runtime_env(host_env: Mapping[str, str], pod_name: str, api_server: str) -> dict[str, str]:
    """What every container gets before its image's env: a few host variables, HOSTNAME, and the
    ``kubernetes`` Service's variables (here the apiserver's own address), with which in-cluster
    clients use the mounted service-account token."""
    env = {k: v for k, v in host_env.items() if k in PASSTHROUGH_ENV or k.startswith(PASSTHROUGH_PREFIXES)}
    api = urlparse(api_server)
    port = str(api.port or 443)
    env |= {
        "HOSTNAME": pod_name,
        "KUBERNETES_SERVICE_HOST": api.hostname or "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
    }
    return env


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known vars are replaced, unknown stay literal, ``$$`` is ``$``."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(repl, value)


def _label_path(path: str, pod: dict[str, Any], field: str) -> str | None:
    m = re.fullmatch(rf"metadata\.{field}\['(.+)'\]", path)
    if not m:
        return None
    return str((pod.get("metadata", {}).get(field) or {}).get(m.group(1), ""))


def field_value(path: str, pod: dict[str, Any], pod_ip: str, host_ip: str) -> str:
    """Value of a ``fieldRef.fieldPath`` for this pod."""
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return str(simple[path])
    for fld in ("labels", "annotations"):
        v = _label_path(path, pod, fld)
        if v is not None:
            return v
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {path!r}")


def _resource_value(ref: dict[str, Any], container: dict[str, Any]) -> str:
    kind, _, res = ref.get("resource", "").partition(".")
    value = (container.get("resources", {}).get(kind) or {}).get(res)
    return str(value) if value is not None else "0"


def _decode_secret(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}


def _key_ref(ref: dict[str, Any], kind: str, namespace: str, lookup: Lookup, decode: bool) -> str | None:
    name, key = ref.get("name", ""), ref["key"]
    data = lookup(namespace, name)
    if data is None:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f'{kind} "{name}" not found')
    if decode:
        data = _decode_secret(data)
    if key not in data:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")
    return data[key]


def container_env(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    image_env: Mapping[str, str],
    pod_ip: str,
    host_ip: str,
    configmaps: Lookup,
    secrets: Lookup,
) -> dict[str, str]:
    """The environment the container's process sees (image env, envFrom, env)."""
    ns = pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = dict(image_env)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            ref, kind, lookup, decode = src["configMapRef"], "configmap", configmaps, False
        elif "secretRef" in src:
            ref, kind, lookup, decode = src["secretRef"], "secret", secrets, True
        else:
            continue
        data = lookup(ns, ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{ref.get("name", "")}" not found')
        env |= {prefix + k: v for k, v in (_decode_secret(data) if decode else data).items()}
    for var in container.get("env") or []:
        name, src = var["name"], var.get("valueFrom")
        value: str | None
        if src is None:
            value = expand(var.get("value", ""), env)
        elif "fieldRef" in src:
            value = field_value(src["fieldRef"]["fieldPath"], pod, pod_ip, host_ip)
        elif "resourceFieldRef" in src:
            value = _resource_value(src["resourceFieldRef"], container)
        elif "configMapKeyRef" in src:
            value = _key_ref(src["configMapKeyRef"], "configmap", ns, configmaps, decode=False)
        elif "secretKeyRef" in src:
            value = _key_ref(src["secretKeyRef"], "secret", ns, secrets, decode=True)
        else:
            raise ContainerConfigError(f"unsupported valueFrom for {name}")
        if value is not None:
            env[name] = value
    return env


def command_line(entrypoint: tuple[str, ...], container: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    """argv: ``command`` replaces the image entrypoint, ``args`` are appended; ``$(VAR)`` expanded."""
    command = container.get("command") or list(entrypoint)
    args = container.get("args") or []
    return [expand(str(a), env) for a in [*command, *args]]
