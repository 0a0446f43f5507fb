"""The monitored demo run the tests/monitoring tests share (session scope, run once):

a small devcluster (one H100 node) started with Prometheus (``TEST_PROMETHEUS``: scrape and rule
evaluation every second, the chart's PrometheusRule loaded), the CRD, the operator as a real
process registered for scraping, and the demo's own traffic: an OmegaVLM with ``attention: auto``
whose flash pod cannot load flash-attn, the operator's rollback to sdpa, then chat completions
with an image. Beside it a pod the chart's PodMonitor does not select (it must not be scraped).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from devcluster import H100_SXM, TEST_KUBELET, Cluster, NodeSpec
from devcluster import demo_omega as demo
from devcluster.promapi import PromApi
from devcluster.prometheus import TEST_PROMETHEUS
from tests.e2e.fallback_support import dump, install_crd, tiny_checkpoint

NAME = "captioner"
CHATS = 3
OTHER_IMAGE = "registry.example.com/monitoring-test/other-app:v1"


@dataclass
class Run:
    """What the monitored run left: the cluster, its Prometheus, and when the traffic ran."""

    cluster: Cluster
    prom: PromApi
    namespace: str
    name: str
    start: float
    end: float
    seen: dict[str, Any] = field(default_factory=dict)


def _other_pod(c: Cluster, namespace: str) -> None:
    """A pod with a port named http, but not the server's labels: discovered, not selected."""
    c.add_image(OTHER_IMAGE, [sys.executable, "-m", "http.server", "8000", "--bind", "$(HOST)"])
    c.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "other-app",
                "namespace": namespace,
                "labels": {"app.kubernetes.io/name": "other-app"},
            },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [
                    {"name": "main", "image": OTHER_IMAGE, "ports": [{"name": "http", "containerPort": 8000}]}
                ],
            },
        }
    )


@pytest.fixture(scope="session")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    state = tmp_path_factory.mktemp("monitored-cluster")
    model = tiny_checkpoint(tmp_path_factory.getbasetemp() / "fallback-tiny" / "qwen2_5_vl")
    nodes = [NodeSpec("h100-sxm-0", H100_SXM, 2, cpu="64", memory="512Gi")]
    with Cluster.start(
        state, nodes=nodes, kubelet=TEST_KUBELET, owner_pid=os.getpid(), prometheus=TEST_PROMETHEUS
    ) as c:
        assert c.prometheus_url, c.info
        install_crd(c)
        ns = f"mon-{uuid.uuid4().hex[:6]}"
        c.kubectl("create", "namespace", ns)
        _other_pod(c, ns)
        prom = PromApi(c.prometheus_url)
        start = time.time()
        try:
            demo.start_operator(c, namespaces=ns, probe_interval_s=2.0)
            seen = demo.apply_and_fall_back(c, ns, model, name=NAME, timeout=240)
            for _ in range(CHATS):
                demo.chat(c, ns, name=NAME)
            chatted = time.time()
            # The chats' histograms are scraped, and a few scrapes more after them (a rate() window).
            prom.wait_for(
                f'sum(omega_server_time_to_first_token_seconds_count{{namespace="{ns}"}}) >= {CHATS}', 30
            )
            prom.wait_for(f'timestamp(omega_server_queue_depth{{namespace="{ns}"}}) > {chatted + 5}', 30)
            prom.wait_for(f'omega_operator_omegavlm_info{{namespace="{ns}", attention="sdpa"}}', 30)
        except BaseException:
            print(dump(c, ns))
            print(
                "--- operator log (tail)\n" + "\n".join(demo.operator_log(c).read_text().splitlines()[-60:])
            )
            raise
        yield Run(c, prom, ns, NAME, start, time.time() + 1, seen)
        prom.close()
