"""The reliability tests on devcluster share the e2e fixtures (the CRD-installed cluster, the tiny
checkpoint, a fresh namespace per test)."""

from tests.e2e.conftest import cluster, model_dir, namespace

__all__ = ["cluster", "model_dir", "namespace"]
