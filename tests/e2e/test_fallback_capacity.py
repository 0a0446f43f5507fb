"""Issue 12 end to end: with no free GPU for the rollback's new pod, ``replicas: 1`` keeps serving and
the status names the wait; once a GPU is free the rollback completes onto sdpa.

The OmegaVLM is restricted to the H100 PCIe node (``spec.gpu.products``, 2 GPUs); a plain pod
requesting ``nvidia.com/gpu`` (in a namespace of its own, so the Ready count is the server's) holds
the other GPU. The set-up is test_fallback_no_outage's: the
operator creates the Deployment and stops, the flash pod falls back to sdpa in process (flash-attn
cannot load here) and turns Ready, the operator starts again and rolls back surge-first. The surge
pod is Unschedulable: the old pod keeps serving, ``Progressing`` is ``RollbackWaitingForCapacity``.
Deleting the filler frees a GPU: the rollback completes, the Ready count never below 1.

Real parts: the devcluster control plane, scheduler and Deployment controller, the operator process,
the inference-server processes (tiny checkpoint, CPU).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from devcluster import Cluster
from tests.e2e.fallback_support import (
    FLASH_IMAGE,
    PYTHON,
    SDPA_IMAGE,
    ReadySampler,
    all_ready_on,
    condition,
    deployed_image,
    deployment,
    make_namespace,
    omegavlm,
    ovlm,
    pods,
    running_operator,
    wait_for,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(900)]

PRODUCT = "NVIDIA-H100-PCIe"  # devcluster's h100-pcie-0: 2 GPUs
FILLER_IMAGE = "registry.example.com/gpu-filler:v1"


def filler_pod(namespace: str, name: str) -> dict:
    """A plain pod holding one GPU of the H100 PCIe node (tolerates the GPU taint)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"role": "gpu-filler"}},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": PRODUCT},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "hold", "image": FILLER_IMAGE, "resources": {"limits": {"nvidia.com/gpu": "1"}}}
            ],
        },
    }


def chat(pod: dict) -> str:
    """A real chat completion through the pod's own IP."""
    url = f"http://{pod['status']['podIP']}:8000/v1/chat/completions"
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    r = httpx.post(url, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def test_rollback_with_no_free_gpu_keeps_serving_and_says_so(
    cluster: Cluster, model_dir: Path, namespace: str, tmp_path: Path
) -> None:
    cluster.add_image(FILLER_IMAGE, [PYTHON, "-c", "import time; time.sleep(3600)"])
    ns, name = namespace, "tight"
    filler_ns = make_namespace(cluster, "fill")
    try:
        run(cluster, ns, name, filler_ns, model_dir, tmp_path)
    finally:
        cluster.kubectl("delete", "namespace", filler_ns, "--wait=false", check=False)


def run(cluster: Cluster, ns: str, name: str, filler_ns: str, model_dir: Path, tmp_path: Path) -> None:
    """The test's body (the filler's namespace is deleted by the caller)."""
    cluster.apply(filler_pod(filler_ns, "filler"))
    wait_for(
        lambda: any(p["spec"].get("nodeName") for p in pods(cluster, filler_ns)),
        60,
        "the filler pod scheduled",
    )
    manifest = omegavlm(name, ns, model_dir, attention="auto", replicas=1, gpu={"products": [PRODUCT]})
    with running_operator(cluster, ns, tmp_path / "operator-1.log"):
        cluster.apply(manifest)
        wait_for(lambda: deployment(cluster, ns, name), 60, "Deployment created")
    assert deployed_image(cluster, ns, name) == FLASH_IMAGE

    wait_for(lambda: all_ready_on(cluster, ns, FLASH_IMAGE, 1), 300, "the flash pod Ready (sdpa in process)")
    with ReadySampler(cluster, ns) as sampler, running_operator(cluster, ns, tmp_path / "operator-2.log"):
        wait_for(lambda: deployed_image(cluster, ns, name) == SDPA_IMAGE, 120, "the rollback started")

        def waiting() -> dict | None:
            cond = condition(ovlm(cluster, ns, name), "Progressing")
            return cond if cond and cond.get("reason") == "RollbackWaitingForCapacity" else None

        cond = wait_for(waiting, 120, "Progressing RollbackWaitingForCapacity")
        assert "waits for a free GPU" in cond["message"], cond
        (old,) = [p for p in pods(cluster, ns) if p["spec"]["containers"][0]["image"] == FLASH_IMAGE]
        assert chat(old)
        described = cluster.kubectl("describe", "omegavlm", name, "-n", ns).stdout
        assert "RollbackWaitingForCapacity" in described, described
        shown = cluster.kubectl("get", "omegavlm", name, "-n", ns).stdout
        print(shown)
        assert "True" in shown.splitlines()[1], shown  # still Ready
        waited_samples = len(sampler.samples)
        # Free a GPU: the surge pod schedules, turns Ready, then the old pod goes.
        cluster.kubectl("delete", "pod", "filler", "-n", filler_ns, "--wait=false")
        wait_for(lambda: all_ready_on(cluster, ns, SDPA_IMAGE, 1), 300, "the sdpa pod Ready, alone")
        obj = wait_for(
            lambda: (o := ovlm(cluster, ns, name))["status"].get("phase") == "Ready" and o, 60, "Ready"
        )
    lowest = min(n for _, n in sampler.samples)
    print(
        f"{len(sampler.samples)} samples ({waited_samples} before the GPU was freed), lowest Ready {lowest}"
    )
    assert lowest >= 1, sampler.samples
    assert obj["status"]["attention"]["fallback"]["reason"] == "FlashAttentionLoadFailed"
    assert condition(obj, "Progressing")["reason"] != "RollbackWaitingForCapacity"
    assert chat(pods(cluster, ns)[0])
