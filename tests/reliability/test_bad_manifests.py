"""Randomly mutated OmegaVLM manifests against the real API server with the operator running (short run).

Each is refused by the API server naming a spec field, or marked Ready=False InvalidSpec naming the field
with no Deployment, or (when the mutation left a valid spec) reconciled; the operator never crashes.
The long run (1,000 manifests) is `python -m bench.reliability manifests`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.reliability.manifest_cases import BASE_SPEC, sample_specs
from bench.reliability.manifests import ManifestReport, apply_batch, expected_errors
from devcluster import Cluster
from tests.e2e.fallback_support import OperatorProcess, install_crd, make_namespace

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]
IDLE_REPO = str(BASE_SPEC["image"]["repository"])


def test_the_base_spec_is_valid_and_a_mutation_is_judged_by_the_operators_own_rules() -> None:
    assert expected_errors(BASE_SPEC) is None
    assert expected_errors({**BASE_SPEC, "replicas": -1}) == ["spec.replicas"]


@pytest.fixture(scope="module")
def operator_ns(
    devcluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, str, OperatorProcess]]:
    install_crd(devcluster)
    for variant in ("flash", "sdpa"):
        devcluster.add_image(f"{IDLE_REPO}:v1-{variant}", ["sleep", "3600"])
    ns = make_namespace(devcluster, "badm")
    op = OperatorProcess(devcluster, ns, tmp_path_factory.mktemp("badm") / "operator.log").start()
    try:
        yield devcluster, ns, op
    finally:
        op.stop()
        devcluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_mutated_manifests_are_refused_or_marked_and_the_operator_lives(
    operator_ns: tuple[Cluster, str, OperatorProcess],
) -> None:
    from kubernetes import client

    cluster, ns, op = operator_ns
    api = cluster.api_client()
    report = ManifestReport()
    specs = sample_specs(40, seed_value=3)
    apply_batch(client.CustomObjectsApi(api), client.AppsV1Api(api), ns, specs, report)
    assert report.applied == 40
    assert report.violations == [], report.violations[:3]
    assert report.outcomes["refused_by_api_server"] > 0 and report.outcomes["marked_invalid_spec"] > 0
    assert op.proc is not None and op.proc.poll() is None, op.log()[-3000:]
