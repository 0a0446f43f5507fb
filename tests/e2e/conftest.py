"""Fixtures of the fallback end-to-end tests (test_fallback_*.py): the devcluster with the CRD
installed, the shared tiny checkpoint, and a fresh namespace per test.

Modules that need something else define their own fixture of the same name (test_operator_reconcile's
``cluster`` also registers stand-in images), which pytest prefers to these.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import install_crd, make_namespace, tiny_checkpoint


@pytest.fixture(scope="module")
def cluster(devcluster: Cluster) -> Cluster:
    """The session's devcluster with the OmegaVLM CRD applied."""
    install_crd(devcluster)
    return devcluster


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL checkpoint, built once and shared by the modules."""
    return tiny_checkpoint(tmp_path_factory.getbasetemp() / "fallback-tiny" / "qwen2_5_vl")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A new namespace ``fb-xxxxxx``, deleted (without waiting) after the test."""
    ns = make_namespace(cluster, "fb")
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
