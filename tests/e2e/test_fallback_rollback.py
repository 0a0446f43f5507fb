"""Issue 5 end to end: a flash variant that cannot load flash-attn says so on /health, and the
operator rolls the OmegaVLM back to the sdpa variant, says why, stays there, and retries on request.

Real parts: the devcluster control plane, the operator process, the inference-server processes
(tiny checkpoint, CPU: flash-attn cannot load here, so the server falls back in-process and
reports it on /health — exactly the signal the operator acts on).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    FLASH_IMAGE,
    PROBE_INTERVAL,
    SDPA_IMAGE,
    all_ready_on,
    condition,
    deployed_image,
    deployment,
    env_of,
    events,
    omegavlm,
    ovlm,
    pods,
    replica_set_images,
    running_operator,
    server_container,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

HOPPER_NODES = {"h100-sxm-0", "h100-pcie-0", "h200-0"}


def test_flash_load_failure_rolls_back_to_sdpa_once_and_retries_on_request(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    ns, name = namespace, "captioner"
    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(omegavlm(name, ns, model_dir, attention="auto"))

        # 1. attention auto starts the flash variant.
        created = wait_for(lambda: deployment(cluster, ns, name), 60, "Deployment created")
        first = server_container(created)
        if first["image"] == FLASH_IMAGE:  # (the rollback may already have happened: fine)
            assert env_of(first)["ATTN_IMPL"] == "flash_attention_2"

        # 2. The flash pod reports the failure on /health; the operator records the fallback.
        obj = wait_for(
            lambda: (
                (o := ovlm(cluster, ns, name)).get("status", {}).get("attention", {}).get("fallback") and o
            ),
            240,
            "status.attention.fallback recorded",
        )
        fb = obj["status"]["attention"]["fallback"]
        assert fb["reason"] == "FlashAttentionLoadFailed"
        assert fb["fromImage"] == FLASH_IMAGE and fb["toImage"] == SDPA_IMAGE
        assert fb["pod"].startswith(f"{name}-") and fb["node"] in HOPPER_NODES
        assert "flash" in fb["message"].lower(), fb["message"]  # the server's own error words
        assert fb["attention"] == "auto" and fb["at"].endswith("Z")

        # 3. One write moved the Deployment to the sdpa image with ATTN_IMPL=sdpa.
        wait_for(lambda: deployed_image(cluster, ns, name) == SDPA_IMAGE, 30, "Deployment on the sdpa image")
        dep = deployment(cluster, ns, name)
        assert dep is not None and env_of(server_container(dep))["ATTN_IMPL"] == "sdpa"

        # 4. sdpa pods become Ready; the status says what runs and why.
        wait_for(lambda: all_ready_on(cluster, ns, SDPA_IMAGE, 1), 240, "sdpa pod Ready")
        obj = wait_for(
            lambda: (
                (o := ovlm(cluster, ns, name))["status"].get("phase") == "Ready"
                and o["status"]["attention"].get("active") == "sdpa"
                and o
            ),
            60,
            "OmegaVLM Ready with attention sdpa",
        )
        degraded = condition(obj, "FlashAttentionDegraded")
        assert degraded is not None and degraded["status"] == "True"
        assert degraded["reason"] == "FlashAttentionLoadFailed"
        assert obj["status"]["variant"] == "sdpa" and obj["status"]["image"] == SDPA_IMAGE

        # kubectl get ovlm: Attention sdpa and the reason; describe: the Warning Event.
        table = cluster.kubectl("get", "ovlm", name, "-n", ns).stdout
        header, row = table.splitlines()[:2]
        cols = dict(zip(header.split(), row.split(), strict=False))
        assert cols["ATTENTION"] == "sdpa" and cols["REASON"] == "FlashAttentionLoadFailed", table
        described = cluster.kubectl("describe", "ovlm", name, "-n", ns).stdout
        assert "FlashAttentionFallback" in described and "Warning" in described, described

        # 5. Sticky: several probe intervals later, still sdpa, still exactly one rollback.
        time.sleep(4 * PROBE_INTERVAL + 1)
        assert deployed_image(cluster, ns, name) == SDPA_IMAGE
        assert len(events(cluster, ns, "FlashAttentionFallback")) == 1
        assert replica_set_images(cluster, ns) == {FLASH_IMAGE, SDPA_IMAGE}
        dep = deployment(cluster, ns, name)
        assert dep is not None and dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
        assert ovlm(cluster, ns, name)["status"]["attention"]["fallback"] == fb  # unchanged record

        # 6. The retry annotation: flash is tried once more, fails again, and is rolled back again.
        cluster.kubectl("annotate", "ovlm", name, "-n", ns, "vlm.omega.io/retry-flash=1", "--overwrite")
        wait_for(
            lambda: ovlm(cluster, ns, name)["status"]["attention"].get("retryFlash") == "1",
            30,
            "retry value consumed",
        )
        wait_for(
            lambda: len(events(cluster, ns, "FlashAttentionFallback")) == 2,
            240,
            "a second rollback after the retry",
        )
        revisions = {
            rs["metadata"]["annotations"].get("deployment.kubernetes.io/revision")
            for rs in cluster.get("replicasets", "-n", ns)["items"]
        }
        assert {"3", "4"} <= revisions  # flash again (3), then sdpa again (4)
        wait_for(lambda: all_ready_on(cluster, ns, SDPA_IMAGE, 1), 240, "sdpa pod Ready after the retry")
        # The same annotation value does not retry again.
        time.sleep(3 * PROBE_INTERVAL)
        assert deployed_image(cluster, ns, name) == SDPA_IMAGE
        assert len(events(cluster, ns, "FlashAttentionFallback")) == 2


def test_attention_sdpa_from_the_start_never_starts_a_flash_pod(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    ns, name = namespace, "plain"
    seen: set[str] = set()

    def ready() -> bool:
        for p in pods(cluster, ns):
            seen.add(p["spec"]["containers"][0]["image"])
        return all_ready_on(cluster, ns, SDPA_IMAGE, 1)

    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(omegavlm(name, ns, model_dir, attention="sdpa"))
        wait_for(ready, 240, "sdpa pod Ready", interval=0.2)
        obj = wait_for(
            lambda: (
                (o := ovlm(cluster, ns, name))["status"].get("attention", {}).get("active") == "sdpa" and o
            ),
            60,
            "attention.active sdpa",
        )
        assert seen == {SDPA_IMAGE}
        assert replica_set_images(cluster, ns) == {SDPA_IMAGE}
        dep = deployment(cluster, ns, name)
        assert dep is not None and env_of(server_container(dep))["ATTN_IMPL"] == "sdpa"
        assert "fallback" not in obj["status"]["attention"]
        degraded = condition(obj, "FlashAttentionDegraded")
        assert degraded is None or degraded["status"] == "False"
        assert events(cluster, ns, "FlashAttentionFallback") == []


def test_fallback_disabled_turns_degraded_without_rollback(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    ns, name = namespace, "strict"
    with running_operator(cluster, ns, tmp_path / "operator.log"):
        cluster.apply(omegavlm(name, ns, model_dir, attention="auto", fallback={"enabled": False}))
        obj = wait_for(
            lambda: (o := ovlm(cluster, ns, name))["status"].get("phase") == "Degraded" and o,
            240,
            "OmegaVLM Degraded",
        )
        degraded = condition(obj, "FlashAttentionDegraded")
        assert degraded is not None and degraded["status"] == "True"
        assert degraded["reason"] == "FlashAttentionLoadFailed"
        assert "fallback" not in obj["status"]["attention"]
        time.sleep(2 * PROBE_INTERVAL)
        assert deployed_image(cluster, ns, name) == FLASH_IMAGE
        assert replica_set_images(cluster, ns) == {FLASH_IMAGE}
        assert events(cluster, ns, "FlashAttentionFallback") == []
