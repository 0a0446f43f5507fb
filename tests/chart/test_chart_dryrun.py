"""`helm template` output, with default values and each ci/*-values.yaml, accepted by a real API
server: `kubectl apply --dry-run=server` on devcluster (admission, defaulting and validation run,
nothing is stored)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devcluster import Cluster
from tests.chart.helm import CHART, CI_VALUES, render_text

pytestmark = [pytest.mark.devcluster, pytest.mark.timeout(300)]

# The release namespace here (not the install test's, which must not be left terminating), and
# the namespaces the ci values refer to (watched namespaces, the dashboard's namespace).
NAMESPACE = "omega-dryrun"
EXTRA_NAMESPACES = ["team-a", "team-b", "monitoring"]


def _stub_crd(group: str, kind: str, plural: str, scope: str = "Namespaced") -> dict[str, object]:
    """A schemaless stand-in for a third party's CRD (prometheus-operator's, kopf's peering), so
    that the chart's objects of those kinds can be dry-run."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"omega-vlm/chart-test": "stub"}},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def prepared(devcluster: Cluster) -> Iterator[Cluster]:
    """The chart's CRD (as `helm install` would put it), stub third-party CRDs, the namespaces."""
    # The documented CRD upgrade command (NOTES.txt, the hook Job); --validate=false because a
    # 1.20 API server's schema has no x-kubernetes-validations (it drops the CEL rules).
    devcluster.kubectl(
        "apply", "--validate=false", "--field-manager=omega-vlm-chart", "-f", str(CHART / "crds")
    )
    devcluster.apply(
        [
            _stub_crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
            _stub_crd("monitoring.coreos.com", "PodMonitor", "podmonitors"),
            _stub_crd("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
            _stub_crd("kopf.dev", "KopfPeering", "kopfpeerings"),
            _stub_crd("kopf.dev", "ClusterKopfPeering", "clusterkopfpeerings", scope="Cluster"),
        ]
    )
    devcluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd", "-l", "omega-vlm/chart-test"
    )
    devcluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/omegavlms.vlm.omega.io")
    created = []
    for ns in [NAMESPACE, *EXTRA_NAMESPACES]:
        if devcluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
            devcluster.kubectl("create", "namespace", ns)
            created.append(ns)
    try:
        yield devcluster
    finally:
        devcluster.kubectl("delete", "crd", "-l", "omega-vlm/chart-test", "--wait=false", check=False)
        if created:
            devcluster.kubectl("delete", "namespace", *created, "--wait=false", check=False)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["defaults", *[p.name for p in CI_VALUES]])
def test_server_side_dry_run(prepared: Cluster, values: Path | None) -> None:
    manifests = render_text(values=values, namespace=NAMESPACE)
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    proc = prepared.kubectl("apply", "--dry-run=server", "-f", "-", input=manifests, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == len(docs), proc.stdout
    assert all(line.endswith("(server dry run)") for line in lines), proc.stdout
    # Nothing was stored.
    assert prepared.kubectl("get", "deployment", "-n", NAMESPACE, "-o", "name").stdout.strip() == ""
