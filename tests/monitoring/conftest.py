"""The monitored demo run the tests/monitoring tests share (session scope, run once):

a small devcluster (one H100 node) started with Prometheus (``TEST_PROMETHEUS``: scrape and rule
evaluation every second, the chart's PrometheusRule loaded), the CRD, the operator as a real
process registered for scraping, and the demo's own traffic: the demo's OmegaVLM with
``attention: auto`` whose flash pod cannot load flash-attn, the operator's rollback to sdpa, then
chat completions with an image. Beside it a pod the chart's PodMonitor does not select (it must
not be scraped).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devcluster import H100_SXM, TEST_KUBELET, Cluster, NodeSpec, demo_operator
from devcluster import demo_omega as demo
from devcluster.promapi import PromApi
from devcluster.prometheus import TEST_PROMETHEUS
from tests.e2e.fallback_support import dump, install_crd, ovlm, tiny_checkpoint, wait_for

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
    ovlm: dict[str, Any] = field(default_factory=dict)  # the OmegaVLM at the end, on sdpa


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


def _fall_back(c: Cluster, prom: PromApi, ns: str, model: Path) -> dict[str, Any]:
    """The demo's OmegaVLM and its rollback to sdpa, held at the moment Prometheus must see.

    The demo's flash pod lives a second or two after its failed flash-attn load (the operator rolls
    back as soon as it probes it), and Prometheus's discovery publishes new targets every 5 s: the
    scrape of that moment would be luck. So the OmegaVLM starts with ``fallback.enabled: false``
    (the flash pod keeps serving on sdpa in process, phase Degraded) until Prometheus has scraped
    the flash pod a few times; then the fallback is turned on and the operator rolls back for real.
    """
    obj = demo.manifest(ns, model, NAME)
    obj["spec"]["fallback"]["enabled"] = False
    c.apply(obj)
    flash = f'omega_server_attention_info{{namespace="{ns}", requested="flash_attention_2", backend="sdpa"}}'
    prom.wait_for(f"count_over_time({flash}[1m]) >= 3", 240, "the flash pod's in-process fallback, scraped")
    c.kubectl(
        "patch", "omegavlm", NAME, "-n", ns, "--type=merge", "-p", '{"spec": {"fallback": {"enabled": true}}}'
    )
    sdpa_image = f"{demo.REPOSITORY}:{demo.TAG}-sdpa"

    def serving_on_sdpa() -> bool:
        pods = c.get("pods", "-n", ns, "-l", f"app.kubernetes.io/instance={NAME}")["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return len(live) == 1 and all(
            p["spec"]["containers"][0]["image"] == sdpa_image
            and any(
                x["type"] == "Ready" and x["status"] == "True" for x in p["status"].get("conditions") or []
            )
            for p in live
        )

    wait_for(serving_on_sdpa, 240, "one Ready pod on the sdpa image")
    return wait_for(
        lambda: (
            (o := ovlm(c, ns, NAME))["status"].get("phase") == "Ready"
            and o["status"]["attention"].get("active") == "sdpa"
            and o
        ),
        60,
        "the OmegaVLM Ready on sdpa",
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
            demo_operator.start_operator(c, namespaces=ns, probe_interval_s=2.0)
            final = _fall_back(c, prom, ns, model)
            for _ in range(CHATS):
                demo.chat(c, ns, name=NAME)
            chatted = time.time()
            # The chats' histograms are scraped, and a few scrapes more after them (a rate() window).
            prom.wait_for(
                f'sum(omega_server_time_to_first_token_seconds_count{{namespace="{ns}"}}) >= {CHATS}', 30
            )
            prom.wait_for(f'sum(omega_server_inter_token_latency_seconds_count{{namespace="{ns}"}}) > 0', 30)
            prom.wait_for(f'timestamp(omega_server_queue_depth{{namespace="{ns}"}}) > {chatted + 5}', 30)
            prom.wait_for(f'omega_operator_omegavlm_info{{namespace="{ns}", attention="sdpa"}}', 30)
        except BaseException:
            print(dump(c, ns))
            print(
                "--- operator log (tail)\n"
                + "\n".join(demo_operator.operator_log(c).read_text().splitlines()[-60:])
            )
            raise
        yield Run(c, prom, ns, NAME, start, time.time() + 1, final)
        prom.close()
