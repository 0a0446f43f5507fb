"""Issue 14 end to end: an hf:// model with spec.model.cache is downloaded once for every pod.

Real parts: the devcluster control plane and process kubelet (init containers, the created
claim's PV, fsGroup), the operator process, the server processes and their `download` init
containers, and the Hub stand-in (tests/hub_standin.py, HF_ENDPOINT) serving a tiny checkpoint
made by `omega_server.tiny`. On CPU the flash variant cannot load flash-attn, so the operator
rolls back to the sdpa variant: its pods must read the cache, never the stand-in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    SDPA_IMAGE,
    all_ready_on,
    events,
    get_json,
    omegavlm,
    ovlm,
    pods,
    running_operator,
    wait_for,
)
from tests.hub_standin import HubStandIn

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(900)]

REPO_ID = "omega-test/tiny-vl"


def _hub_spec(name: str, ns: str, model_dir: Path, hub: HubStandIn, **kw: object) -> dict[str, object]:
    body = omegavlm(name, ns, model_dir, **kw)  # type: ignore[arg-type]
    spec = body["spec"]
    spec["model"] = {"name": "tiny", "uri": f"hf://{REPO_ID}"}
    spec["env"] = [
        {"name": "HF_ENDPOINT", "value": hub.url},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    return body


def test_two_replicas_download_once_and_the_sdpa_fallback_reads_the_cache(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    ns, name = namespace, "cached"
    root = tmp_path / "hub"
    shutil.copytree(model_dir, root / REPO_ID)
    files = sorted(str(p.relative_to(root / REPO_ID)) for p in (root / REPO_ID).rglob("*") if p.is_file())
    with HubStandIn(root) as hub, running_operator(cluster, ns, tmp_path / "operator.log"):
        body = _hub_spec(name, ns, model_dir, hub, attention="auto", replicas=2)
        body["spec"]["model"]["cache"] = {"size": "1Gi", "accessMode": "ReadWriteMany"}  # type: ignore[index]
        cluster.apply(body)

        # the operator creates the claim, owned by the OmegaVLM; the pods mount it
        claim = wait_for(
            lambda: get_json(cluster, "pvc", f"{name}-model-cache", "-n", ns), 60, "the cache claim"
        )
        assert claim["metadata"]["ownerReferences"][0]["name"] == name
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

        # flash pods download (once), fail flash-attn on CPU, and the operator rolls back to sdpa
        wait_for(lambda: all_ready_on(cluster, ns, SDPA_IMAGE, 2), 600, "two sdpa pods Ready")
        obj = ovlm(cluster, ns, name)
        assert obj["status"]["attention"]["fallback"]["reason"] == "FlashAttentionLoadFailed"

        # one download of each file for four pods (two flash, two sdpa); the model info API once
        assert hub.downloads == {f"{REPO_ID}/{f}": 1 for f in files}, hub.stats()
        assert hub.counts["api-revision"] == 1, hub.stats()
        sdpa_pods = [p for p in pods(cluster, ns) if p["spec"]["containers"][0]["image"] == SDPA_IMAGE]
        assert len(sdpa_pods) >= 2
        for p in sdpa_pods:
            (init,) = p["status"]["initContainerStatuses"]
            assert init["name"] == "model-download" and init["state"]["terminated"]["exitCode"] == 0
            log = cluster.pod_log(ns, p["metadata"]["name"], "model-download")
            assert "already complete (no download)" in log, log
        assert not events(cluster, ns, "ModelDownloadedEveryStart")


def test_without_a_cache_the_operator_warns_that_every_start_downloads(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    ns, name = namespace, "uncached"
    with HubStandIn(tmp_path) as hub, running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(_hub_spec(name, ns, model_dir, hub, replicas=0))
        (warning,) = wait_for(
            lambda: events(cluster, ns, "ModelDownloadedEveryStart"), 60, "the no-cache Warning"
        )
        assert warning["type"] == "Warning" and "spec.model.cache" in warning["message"]
        dep = get_json(cluster, "deployment", name, "-n", ns)
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        assert {"name": "model-cache", "emptyDir": {}} in volumes
