"""Issue 4 end to end on devcluster: the operator as a real process (`python -m omega_operator`)
against a real API server, controller manager and scheduler, with the process kubelet.

Covers: the example manifest -> Deployment/Service/PDB with every field, pods on H100 nodes only,
`kubectl get ovlm` columns; spec changes roll the Deployment and the Service follows; invalid
manifests refused by the API server or marked InvalidSpec naming the field, with no child
touched; drift repair; delete cascades; Schedulable=False with the scheduler's message; a real
server pod becoming Ready; an operator restart that writes nothing.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from omega_operator.api import InvalidSpec, parse_spec

from devcluster import Cluster
from tests.e2e.fallback_support import (
    PROBE_INTERVAL,
    OperatorProcess,
    condition,
    deployment,
    dump,
    env_of,
    install_crd,
    ovlm,
    pods,
    server_container,
    tiny_checkpoint,
    to_yaml,
    wait_for,
)
from tests.e2e.operator_support import (
    INVALID,
    api_writes,
    base_spec,
    example,
    manifest,
    model_pvc,
    ovlm_events,
    wait_settled,
)

pytestmark = [pytest.mark.devcluster, pytest.mark.slow, pytest.mark.timeout(600)]

HOPPER_NODES = {"h100-sxm-0", "h100-pcie-0", "h200-0"}
# Images the process kubelet runs as an idle process: pods are Running but never Ready (the
# startup probe on /health keeps failing quietly), which is all placement and rollout tests need.
IMAGE_UID = 10001  # stand-ins run as the server image's user: the pods are non-root, no uid forced
IDLE_REPO = "registry.example.com/omega-idle"
EXAMPLE_REPO = "registry.example.com/omega-vlm-server"


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"opr{uuid.uuid4().hex[:5]}"


@pytest.fixture(scope="module")
def cluster(devcluster: Cluster) -> Cluster:
    install_crd(devcluster)
    for variant in ("flash", "sdpa"):
        devcluster.add_image(f"{EXAMPLE_REPO}:v0.1.0-{variant}", ["sleep", "3600"])
        devcluster.add_image(f"{IDLE_REPO}:v1-{variant}", ["sleep", "3600"], uid=IMAGE_UID)
        devcluster.add_image(f"{IDLE_REPO}:v2-{variant}", ["sleep", "3600"], uid=IMAGE_UID)
    return devcluster


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator process for the module, watching the namespaces `<prefix>-*` (a kopf glob)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster, f"{prefix}-*", log).start()
    yield op
    op.stop()


@pytest.fixture
def ns(
    cluster: Cluster, operator: OperatorProcess, prefix: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    name = f"{prefix}-{request.node.name.split('[')[0].removeprefix('test_')[:20].replace('_', '-')}"
    name = name.rstrip("-") + "-" + uuid.uuid4().hex[:4]
    cluster.kubectl("create", "namespace", name)
    yield name
    print(dump(cluster, name, operator))  # shown by pytest only when the test failed
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster: Cluster, obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
    # --validate=false: let the API server (not kubectl's client-side copy of the schema) decide.
    return cluster.kubectl("apply", "--validate=false", "-f", "-", input=to_yaml(obj), check=check)


def patch(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "omegavlm", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))


def get(cluster: Cluster, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    proc = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def settle_timeout() -> float:
    return 30 * PROBE_INTERVAL


# ----------------------------------------------------------------------------- the example


def test_example_deployment_on_h100(cluster: Cluster, ns: str) -> None:
    model_pvc(cluster, ns)
    apply(cluster, example(ns))
    dep = wait_for(lambda: deployment(cluster, ns, "captioner"), 30, "Deployment created")
    uid = ovlm(cluster, ns, "captioner")["metadata"]["uid"]

    assert dep["metadata"]["ownerReferences"][0]["uid"] == uid
    assert dep["metadata"]["ownerReferences"][0]["controller"] is True
    labels = dep["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "omega-vlm-operator"
    assert labels["app.kubernetes.io/instance"] == "captioner"
    raw = cluster.kubectl(
        "get", "deployment", "captioner", "-n", ns, "-o", "json", "--show-managed-fields"
    ).stdout
    fields = json.loads(raw)["metadata"]["managedFields"]
    managers = {m["manager"] for m in fields if m["operation"] == "Apply"}
    assert managers == {"omega-vlm-operator"}  # server-side apply under one field manager
    assert dep["spec"]["replicas"] == 2
    c = server_container(dep)
    assert c["image"] == f"{EXAMPLE_REPO}:v0.1.0-flash"
    env = env_of(c)
    assert env["ATTN_IMPL"] == "flash_attention_2"
    assert (env["MAX_BATCH_SIZE"], env["MAX_MODEL_LENGTH"], env["DTYPE"]) == ("4", "8192", "bfloat16")
    assert env["SERVED_MODEL_NAME"] == "omega-17-vl-exp" and env["PORT"] == "8000"
    assert env["MODEL_PATH"] == "/models/models/omega-17"
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/live"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    pod_spec = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod_spec["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["model"]["readOnly"] is True and mounts["dshm"]["mountPath"] == "/dev/shm"
    term = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr = term["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert expr["key"] == "nvidia.com/gpu.product" and "NVIDIA-H100-80GB-HBM3" in expr["values"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]

    svc = wait_for(lambda: get(cluster, "service", ns, "captioner"), 30, "Service created")
    assert svc["spec"]["ports"][0]["port"] == 8000 and svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    pdb = wait_for(lambda: get(cluster, "poddisruptionbudget", ns, "captioner"), 30, "PDB created")
    assert pdb["spec"]["maxUnavailable"] == 1
    # discovery: a 1.20 API server serves policy/v1beta1 only; the operator wrote that version
    served = cluster.kubectl("api-versions").stdout.split()
    wanted = "policy/v1" if "policy/v1" in served else "policy/v1beta1"
    managed = cluster.kubectl(
        "get",
        "pdb",
        "captioner",
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.managedFields[0].apiVersion}",
        "--show-managed-fields",
    ).stdout
    assert managed == wanted

    # kubectl explain reads the descriptions from the CRD schema
    explain = cluster.kubectl("explain", "omegavlm.spec.runtime").stdout
    assert "maxBatchSize" in explain and "MAX_BATCH_SIZE" in explain

    # The pods bind to the H100 nodes (the example names H100 products), never to the A100 or CPU node.
    def bound() -> list[str] | None:
        nodes = [p["spec"].get("nodeName") for p in pods(cluster, ns)]
        return nodes if len(nodes) == 2 and all(nodes) else None

    nodes = wait_for(bound, 60, "both pods bound")
    assert set(nodes) <= HOPPER_NODES, nodes

    # kubectl get ovlm: the columns.
    def columns() -> list[str] | None:
        out = cluster.kubectl("get", "ovlm", "-n", ns).stdout.splitlines()
        return out if len(out) == 2 and "flash" in out[1] else None

    header, row = wait_for(columns, 30, "kubectl get ovlm row")
    assert header.split() == ["NAME", "READY", "ATTENTION", "REPLICAS", "VARIANT", "REASON", "AGE"]
    assert row.split()[:5] == ["captioner", "False", "unknown", "0/2", "flash"]
    # also found by its category
    assert "captioner" in cluster.kubectl("get", "omega", "-n", ns).stdout
    created = ovlm_events(cluster, ns, "Created")
    assert created and "flash variant" in created[0]["message"]


# ----------------------------------------------------------------------------- spec changes


def test_spec_changes_roll_the_deployment(cluster: Cluster, ns: str) -> None:
    spec = base_spec(IDLE_REPO)
    apply(cluster, manifest("roll", ns, spec))
    dep = wait_for(lambda: deployment(cluster, ns, "roll"), 30, "Deployment created")
    assert dep["spec"]["replicas"] == 0
    assert server_container(dep)["image"] == f"{IDLE_REPO}:v1-flash"
    gen0 = dep["metadata"]["generation"]

    # image variant: attention sdpa -> the sdpa image with ATTN_IMPL=sdpa
    patch(cluster, ns, "roll", {"attention": "sdpa"})

    def rolled(image: str, **env: str) -> dict[str, Any] | None:
        d = deployment(cluster, ns, "roll")
        if d is None or server_container(d)["image"] != image:
            return None
        e = env_of(server_container(d))
        return d if all(e.get(k) == v for k, v in env.items()) else None

    dep = wait_for(lambda: rolled(f"{IDLE_REPO}:v1-sdpa", ATTN_IMPL="sdpa"), 30, "sdpa variant")
    assert dep["metadata"]["generation"] > gen0
    assert wait_for(
        lambda: (ovlm(cluster, ns, "roll").get("status") or {}).get("variant") == "sdpa", 30, "status"
    )
    assert ovlm_events(cluster, ns, "VariantChanged")

    # batch size and a new tag
    patch(cluster, ns, "roll", {"runtime": {"maxBatchSize": 16}, "image": {"tag": "v2"}})
    wait_for(lambda: rolled(f"{IDLE_REPO}:v2-sdpa", MAX_BATCH_SIZE="16"), 30, "batch size 16 on v2")

    # replicas 0 -> 2: the Deployment scales, a PDB appears; back to 1: the PDB goes
    patch(cluster, ns, "roll", {"replicas": 2})
    wait_for(
        lambda: (deployment(cluster, ns, "roll") or {}).get("spec", {}).get("replicas") == 2, 30, "2 replicas"
    )
    wait_for(lambda: get(cluster, "poddisruptionbudget", ns, "roll"), 30, "PDB for 2 replicas")
    wait_for(lambda: len(pods(cluster, ns)) == 2, 60, "2 pods")
    patch(cluster, ns, "roll", {"replicas": 1})
    wait_for(lambda: get(cluster, "poddisruptionbudget", ns, "roll") is None, 30, "PDB removed at 1 replica")

    # the Service follows
    patch(cluster, ns, "roll", {"service": {"port": 9000, "type": "NodePort"}})

    def service_follows() -> bool:
        svc = get(cluster, "service", ns, "roll") or {}
        return svc.get("spec", {}).get("type") == "NodePort" and svc["spec"]["ports"][0]["port"] == 9000

    wait_for(service_follows, 30, "Service on port 9000, NodePort")
    status = ovlm(cluster, ns, "roll")["status"]
    assert status["observedGeneration"] == ovlm(cluster, ns, "roll")["metadata"]["generation"]


# ----------------------------------------------------------------------------- invalid specs


@pytest.mark.parametrize(("change", "field"), [(c, f) for _, c, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_manifest_is_refused_or_marked(
    cluster: Cluster, ns: str, change: dict[str, Any], field: str
) -> None:
    spec = {**base_spec(IDLE_REPO), **change}
    proc = apply(cluster, manifest("bad", ns, spec), check=False)
    if proc.returncode != 0:
        # refused by the API server's schema (1.20 enforces the structural schema, not CEL)
        assert field in proc.stderr, proc.stderr
        assert get(cluster, "omegavlm", ns, "bad") is None
        return

    def invalid() -> dict[str, Any] | None:
        cond = condition(ovlm(cluster, ns, "bad"), "Ready")
        return cond if cond and cond["reason"] == "InvalidSpec" else None

    cond = wait_for(invalid, 30, "Ready=False InvalidSpec")
    assert cond["status"] == "False" and field in cond["message"], cond
    assert ovlm(cluster, ns, "bad")["status"]["phase"] == "Failed"
    evs = wait_for(lambda: ovlm_events(cluster, ns, "InvalidSpec"), 30, "InvalidSpec Event")
    assert evs[0]["type"] == "Warning" and field in evs[0]["message"]
    assert evs[0]["involvedObject"]["kind"] == "OmegaVLM"
    # no child touched
    time.sleep(PROBE_INTERVAL)
    assert deployment(cluster, ns, "bad") is None and get(cluster, "service", ns, "bad") is None


@pytest.mark.parametrize(("change", "field"), [(c, f) for _, c, f in INVALID], ids=[i for i, _, _ in INVALID])
def test_the_operator_refuses_each_invalid_spec_naming_its_field(change: dict[str, Any], field: str) -> None:
    """Every spec of the catalogue, schema-level ones included, is refused by the operator's own
    validation (what it marks InvalidSpec when an API server lets the spec through), and the message
    that goes into the condition and the Event names the field."""
    with pytest.raises(InvalidSpec) as info:
        parse_spec({**base_spec(IDLE_REPO), **change})
    assert field in info.value.fields, info.value.fields
    assert field in str(info.value)


def test_update_to_invalid_spec_touches_no_child(cluster: Cluster, ns: str) -> None:
    apply(cluster, manifest("upd", ns, base_spec(IDLE_REPO)))
    dep = wait_for(lambda: deployment(cluster, ns, "upd"), 30, "Deployment created")
    svc = wait_for(lambda: get(cluster, "service", ns, "upd"), 30, "Service created")
    patch(cluster, ns, "upd", {"env": [{"name": "MODEL_PATH", "value": "/elsewhere"}], "replicas": 3})

    def invalid() -> bool:
        cond = condition(ovlm(cluster, ns, "upd"), "Ready")
        return bool(cond and cond["reason"] == "InvalidSpec" and "spec.env[0].name" in cond["message"])

    wait_for(invalid, 30, "InvalidSpec after the update")
    time.sleep(2 * PROBE_INTERVAL)
    after = deployment(cluster, ns, "upd")
    assert after is not None
    # (the controller manager writes the Deployment's status; its spec and generation are ours)
    assert after["metadata"]["generation"] == dep["metadata"]["generation"]
    assert after["spec"] == dep["spec"]
    assert after["spec"]["replicas"] == 0
    assert (get(cluster, "service", ns, "upd") or {})["metadata"]["resourceVersion"] == svc["metadata"][
        "resourceVersion"
    ]
    # fixing the spec heals it
    cluster.kubectl(
        "patch", "omegavlm", "upd", "-n", ns, "--type=json", "-p", '[{"op":"remove","path":"/spec/env"}]'
    )
    wait_for(
        lambda: (deployment(cluster, ns, "upd") or {}).get("spec", {}).get("replicas") == 3, 30, "3 replicas"
    )
    wait_for(
        lambda: (condition(ovlm(cluster, ns, "upd"), "Ready") or {}).get("reason") != "InvalidSpec",
        30,
        "valid",
    )


# ----------------------------------------------------------------------------- drift, delete


def test_drift_is_repaired(cluster: Cluster, ns: str) -> None:
    apply(cluster, manifest("drift", ns, base_spec(IDLE_REPO)))
    dep = wait_for(lambda: deployment(cluster, ns, "drift"), 30, "Deployment created")

    # a hand edit of a field we own is put back
    cluster.kubectl(
        "set", "env", "deployment/drift", "-n", ns, "-c", "server", "MAX_BATCH_SIZE=64", "ATTN_IMPL=eager"
    )
    wait_for(
        lambda: env_of(server_container(deployment(cluster, ns, "drift") or {})).get("MAX_BATCH_SIZE") == "4",
        10 * PROBE_INTERVAL,
        "env repaired",
    )
    assert (
        env_of(server_container(deployment(cluster, ns, "drift") or {}))["ATTN_IMPL"] == "flash_attention_2"
    )
    cluster.kubectl("scale", "deployment/drift", "-n", ns, "--replicas=3")
    wait_for(
        lambda: (deployment(cluster, ns, "drift") or {})["spec"]["replicas"] == 0,
        10 * PROBE_INTERVAL,
        "scale",
    )

    # a deleted child is recreated
    cluster.kubectl("delete", "deployment", "drift", "-n", ns)
    new = wait_for(lambda: deployment(cluster, ns, "drift"), 10 * PROBE_INTERVAL, "Deployment recreated")
    assert new["metadata"]["uid"] != dep["metadata"]["uid"]
    cluster.kubectl("delete", "service", "drift", "-n", ns)
    wait_for(lambda: get(cluster, "service", ns, "drift"), 10 * PROBE_INTERVAL, "Service recreated")


def test_delete_cascades(cluster: Cluster, ns: str) -> None:
    spec = {**base_spec(IDLE_REPO), "replicas": 2, "gpu": {"products": ["NVIDIA-H100-80GB-HBM3"]}}
    apply(cluster, manifest("gone", ns, spec))
    wait_for(lambda: get(cluster, "poddisruptionbudget", ns, "gone"), 30, "PDB created")
    wait_for(lambda: len(pods(cluster, ns)) == 2, 60, "pods created")
    cluster.kubectl("delete", "omegavlm", "gone", "-n", ns, "--wait=true", "--timeout=60s")

    def all_gone() -> bool:
        return all(
            get(cluster, kind, ns, "gone") is None
            for kind in ("deployment", "service", "poddisruptionbudget")
        ) and not [p for p in pods(cluster, ns) if not p["metadata"].get("deletionTimestamp")]

    wait_for(all_gone, 90, "children garbage-collected")


# ----------------------------------------------------------------------------- scheduling


def test_no_h100_capacity_is_unschedulable(cluster: Cluster, ns: str) -> None:
    # 8 GPUs per pod: at most two pods fit (h100-sxm-0 and h200-0 have 8, h100-pcie-0 has 2); the
    # A100 node has 8 free GPUs but is the wrong family.
    spec = {**base_spec(IDLE_REPO), "replicas": 3, "gpu": {"count": 8}}
    apply(cluster, manifest("big", ns, spec))

    def unschedulable() -> dict[str, Any] | None:
        cond = condition(ovlm(cluster, ns, "big"), "Schedulable")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for(unschedulable, 60, "Schedulable=False")
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond
    assert "nodes are available" in cond["message"]
    status = ovlm(cluster, ns, "big")["status"]
    ready = condition(ovlm(cluster, ns, "big"), "Ready") or {}
    assert ready.get("status") == "False" and ready.get("reason") == "Unschedulable"
    assert status["phase"] == "Pending"
    evs = wait_for(lambda: ovlm_events(cluster, ns, "Unschedulable"), 30, "Unschedulable Event")
    assert "Insufficient nvidia.com/gpu" in evs[0]["message"]
    for p in pods(cluster, ns):
        node = p["spec"].get("nodeName")
        assert node is None or node in HOPPER_NODES
    # capacity back (fewer GPUs per pod): schedulable again
    patch(cluster, ns, "big", {"replicas": 1})
    wait_for(
        lambda: (condition(ovlm(cluster, ns, "big"), "Schedulable") or {}).get("status") == "True",
        60,
        "Schedulable=True after scaling down",
    )


# ----------------------------------------------------------------------------- real server, restart


def test_ready_on_a_real_server_and_restart_writes_nothing(
    cluster: Cluster, ns: str, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "qwen2_vl", arch="qwen2_vl")
    spec = {
        "model": {"name": "tiny", "uri": f"file://{model}"},
        "replicas": 1,
        "image": {"repository": "registry.example.com/omega-vlm-server", "tag": "e2e"},
        "attention": "sdpa",
        "runtime": {
            "maxBatchSize": 2,
            "maxModelLength": 512,
            "dtype": "float32",
            "startupTimeoutSeconds": 600,
        },
    }
    apply(cluster, manifest("real", ns, spec))
    # plus an idle one and a scaled-to-zero one, so the restart sees several kinds of state
    apply(cluster, manifest("idle", ns, {**base_spec(IDLE_REPO), "replicas": 1}))
    apply(cluster, manifest("zero", ns, base_spec(IDLE_REPO)))

    def ready() -> dict[str, Any] | None:
        obj = ovlm(cluster, ns, "real")
        cond = condition(obj, "Ready")
        return obj if cond and cond["status"] == "True" and obj["status"]["attention"].get("active") else None

    obj = wait_for(ready, 240, "real server Ready")
    assert obj["status"]["attention"]["active"] == "sdpa"
    assert obj["status"]["phase"] == "Ready" and obj["status"]["replicaSummary"] == "1/1"
    row = cluster.kubectl("get", "ovlm", "real", "-n", ns, "--no-headers").stdout.split()
    assert row[1:6] == ["True", "sdpa", "1/1", "sdpa", "AllReplicasReady"], row
    assert ovlm_events(cluster, ns, "Ready")

    # Settled: no writes for a while. Restart the operator: still no writes. (The API server's
    # counters are cluster-wide: first let namespaces of earlier tests finish terminating.)
    wait_for(lambda: "Terminating" not in cluster.kubectl("get", "ns").stdout, 180, "namespaces deleted")
    before = wait_settled(cluster, quiet_s=4 * PROBE_INTERVAL, timeout=settle_timeout())
    resumed = operator.log().count(" resumed ")
    operator.stop()
    operator.start()
    wait_for(lambda: operator.log().count(" resumed ") >= resumed + 3, 60, "operator resumed")
    time.sleep(5 * PROBE_INTERVAL)  # several timer rounds: probes, drift checks
    after = api_writes(cluster)
    assert after == before, f"{after - before} API writes after a restart with nothing changed"
    assert ovlm(cluster, ns, "real")["status"]["phase"] == "Ready"
