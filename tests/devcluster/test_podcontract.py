"""The process kubelet enforces the pod contract: users, volumes, read-only mounts, grace periods.

Real control plane, real processes: each container enters its own mount namespace and root, as
the uid/gid its securityContext (or its image) says, with its volumes at their mountPaths.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devcluster import Cluster
from devcluster.procs import alive

pytestmark = pytest.mark.devcluster

PY = "devcluster-test/contract-python"
SERVER_STAND_IN = "registry.example.com/omega-vlm-server:contract-test"


@pytest.fixture(scope="module")
def ns(devcluster: Cluster) -> str:
    name = f"dc-contract-{uuid.uuid4().hex[:6]}"
    devcluster.kubectl("create", "namespace", name)
    devcluster.add_image(PY, [sys.executable, "-c"], env={"PYTHONUNBUFFERED": "1"})
    devcluster.wait_for(
        lambda: devcluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        what="default ServiceAccount",
    )
    return name


def pod(name: str, ns: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"nodeName": "cpu-0", "terminationGracePeriodSeconds": 2, **spec}
    body["containers"] = [{"image": f"{PY}:1", **c} for c in containers]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": body}


def status(c: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(c.get("pod", name, "-n", ns).get("status") or {})


def container_state(c: Cluster, ns: str, name: str, container: str) -> dict[str, Any]:
    for cs in status(c, ns, name).get("containerStatuses") or []:
        if cs["name"] == container:
            return dict(cs["state"])
    return {}


def log_line(c: Cluster, ns: str, name: str, container: str, prefix: str, timeout: float = 30) -> str:
    """The first line of the container's output that starts with ``prefix`` (waits for it)."""

    def find() -> str | None:
        try:
            text = c.pod_log(ns, name, container)
        except FileNotFoundError:
            return None
        return next((ln for ln in text.splitlines() if ln.startswith(prefix)), None)

    return str(
        c.wait_for(find, timeout=timeout, what=f"{prefix!r} in {name}/{container}: {_tail(c, ns, name)}")
    )


def _tail(c: Cluster, ns: str, name: str) -> str:
    d = c.layout.pods / ns / name
    return (
        " | ".join(p.read_text(errors="replace")[-300:] for p in sorted(d.glob("*.log")))
        if d.exists()
        else ""
    )


def kubelet_dir(c: Cluster, ns: str, name: str) -> Path:
    uid = c.get("pod", name, "-n", ns)["metadata"]["uid"]
    return c.layout.kubelet / "pods" / uid


def events(c: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return [e for e in c.get("events", "-n", ns)["items"] if e["involvedObject"]["name"] == name]


def test_run_as_user_group_fs_group_and_a_shared_empty_dir(devcluster: Cluster, ns: str) -> None:
    """uid/gid/groups as asked (container overrides pod); files written are the uid's and the
    fsGroup's; the emptyDir is shared, read-only where mounted so, and gone with the pod."""
    writer = (
        "import os, time\n"
        "open('/data/shared', 'w').write('from-writer')\n"
        "st = os.stat('/data/shared')\n"
        "print('ids', os.getuid(), os.getgid(), sorted(os.getgroups()), st.st_uid, st.st_gid, flush=True)\n"
        "for path in ('/etc/devcluster-denied', '/home/denied'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('wrote', path, flush=True)\n"
        "    except PermissionError as e:\n"
        "        print('denied', path, e.errno, flush=True)\n"
        "time.sleep(600)\n"
    )
    reader = (
        "import os, time\n"
        "while not os.path.exists('/data/shared'): time.sleep(0.1)\n"
        "print('read', open('/data/shared').read(), os.getuid(), os.getgid(), flush=True)\n"
        "try:\n"
        "    open('/data/other', 'w')\n"
        "except OSError as e:\n"
        "    print('readonly', e.errno, flush=True)\n"
        "time.sleep(600)\n"
    )
    devcluster.apply(
        pod(
            "ids",
            ns,
            [
                {
                    "name": "writer",
                    "args": [writer],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                },
                {
                    "name": "reader",
                    "args": [reader],
                    "securityContext": {"runAsUser": 5678},
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                },
            ],
            securityContext={
                "runAsUser": 1234,
                "runAsGroup": 2345,
                "fsGroup": 3456,
                "supplementalGroups": [4567],
            },
            volumes=[{"name": "data", "emptyDir": {}}],
        )
    )
    ids = log_line(devcluster, ns, "ids", "writer", "ids ")
    assert ids == "ids 1234 2345 [2345, 3456, 4567] 1234 3456"  # setgid volume root: the fsGroup's file
    assert log_line(devcluster, ns, "ids", "writer", "denied /etc/") == "denied /etc/devcluster-denied 13"
    assert log_line(devcluster, ns, "ids", "writer", "denied /home/") == "denied /home/denied 13"
    assert not Path("/etc/devcluster-denied").exists()
    # runAsUser of the container overrides the pod's; runAsGroup is still the pod's.
    assert log_line(devcluster, ns, "ids", "reader", "read ") == "read from-writer 5678 2345"
    assert log_line(devcluster, ns, "ids", "reader", "readonly ") == "readonly 30"  # EROFS
    kdir = kubelet_dir(devcluster, ns, "ids")
    vol = kdir / "volumes" / "kubernetes.io~empty-dir" / "data"
    st = vol.stat()
    assert (st.st_gid, st.st_mode & 0o7777) == (3456, 0o2777)
    shared = (vol / "shared").stat()
    assert (shared.st_uid, shared.st_gid) == (1234, 3456)
    devcluster.kubectl("delete", "pod", "ids", "-n", ns, "--timeout=60s")
    devcluster.wait_for(lambda: not kdir.exists(), timeout=10, what="pod folder removed")


def test_image_user_home_and_working_directory(devcluster: Cluster, ns: str) -> None:
    """Without runAsUser the image's user runs (the server image: 10001), in its own writable HOME."""
    devcluster.add_image(SERVER_STAND_IN, [sys.executable, "-c"])
    script = (
        "import getpass, os, time\n"
        "open('written', 'w').write('x')\n"
        "st = os.stat('/home/omega')\n"
        "print('user', os.getuid(), os.getgid(), os.environ['HOME'], os.getcwd(), st.st_uid, os.stat('written').st_uid,"
        " os.environ['HF_HOME'], getpass.getuser(), flush=True)\n"
        "time.sleep(600)\n"
    )
    devcluster.apply(pod("imageuser", ns, [{"name": "server", "image": SERVER_STAND_IN, "args": [script]}]))
    line = log_line(devcluster, ns, "imageuser", "server", "user ")
    # getuser(): the image's /etc/passwd knows its user (the host's does not).
    assert line == "user 10001 10001 /home/omega /home/omega 10001 10001 /home/omega/.cache/huggingface omega"
    assert not Path("/home/omega").exists()  # the image's directory is the container's, not the host's
    devcluster.kubectl("delete", "pod", "imageuser", "-n", ns, "--wait=false")


def test_run_as_non_root_refuses_root(devcluster: Cluster, ns: str) -> None:
    """runAsNonRoot with an image that runs as root, or with runAsUser 0: the kubelet's refusal."""
    devcluster.apply(
        [
            pod(
                "nonroot-image",
                ns,
                [{"name": "c", "args": ["print('ran')"]}],
                securityContext={"runAsNonRoot": True},
            ),
            pod(
                "nonroot-uid0",
                ns,
                [
                    {
                        "name": "c",
                        "args": ["print('ran')"],
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 0},
                    }
                ],
            ),
        ]
    )
    for name, expected in (
        ("nonroot-image", "container has runAsNonRoot and image will run as root"),
        ("nonroot-uid0", "container's runAsUser breaks non-root policy"),
    ):
        waiting = devcluster.wait_for(
            lambda n=name: container_state(devcluster, ns, n, "c").get("waiting", {}).get("message"),
            what=f"{name} refused",
        )
        uid = devcluster.get("pod", name, "-n", ns)["metadata"]["uid"]
        assert waiting == f'{expected} (pod: "{name}_{ns}({uid})", container: c)'
        assert container_state(devcluster, ns, name, "c")["waiting"]["reason"] == "CreateContainerConfigError"
        assert status(devcluster, ns, name)["phase"] == "Pending"
        assert any(e["reason"] == "Failed" and expected in e["message"] for e in events(devcluster, ns, name))
        assert not [k for k in devcluster.pids() if k.startswith(f"pod:{ns}/{name}/")]
        devcluster.kubectl("delete", "pod", name, "-n", ns, "--wait=false")


def test_memory_empty_dir_is_a_tmpfs_of_its_size_limit(devcluster: Cluster, ns: str) -> None:
    script = (
        "import os, time\n"
        "fs = [ln.split(' - ')[1].split()[0] for ln in open('/proc/self/mountinfo') if ln.split()[4] == '/cache']\n"
        "v = os.statvfs('/cache'); shm = os.statvfs('/dev/shm')\n"
        "print('cache', fs, v.f_blocks * v.f_frsize, shm.f_blocks * shm.f_frsize, flush=True)\n"
        "try:\n"
        "    open('/cache/big', 'wb').write(b'x' * 9 * 2**20)\n"
        "except OSError as e:\n"
        "    print('full', e.errno, flush=True)\n"
        "time.sleep(600)\n"
    )
    devcluster.apply(
        pod(
            "memdir",
            ns,
            [{"name": "c", "args": [script], "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
            volumes=[{"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}],
        )
    )
    assert log_line(devcluster, ns, "memdir", "c", "cache ") == f"cache ['tmpfs'] {8 * 2**20} {64 * 2**20}"
    assert log_line(devcluster, ns, "memdir", "c", "full ") == "full 28"  # ENOSPC
    devcluster.kubectl("delete", "pod", "memdir", "-n", ns, "--wait=false")


def test_configmap_secret_and_service_account_token_files(devcluster: Cluster, ns: str) -> None:
    devcluster.kubectl(
        "create", "configmap", "settings", "-n", ns, "--from-literal=a.conf=alpha", "--from-literal=b=beta"
    )
    devcluster.kubectl("create", "secret", "generic", "creds", "-n", ns, "--from-literal=password=s3cret")
    script = (
        "import os, time, json, stat\n"
        "def mode(p): return oct(stat.S_IMODE(os.stat(p).st_mode))\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "out = {'cfg': sorted(n for n in os.listdir('/etc/cfg') if not n.startswith('..')),\n"
        "       'renamed': open('/etc/cfg/renamed.conf').read(), 'renamed_mode': mode('/etc/cfg/renamed.conf'),\n"
        "       'password': open('/etc/creds/password').read(), 'password_mode': mode('/etc/creds/password'),\n"
        "       'sa': sorted(n for n in os.listdir(sa) if not n.startswith('..')),\n"
        "       'namespace': open(sa + '/namespace').read(), 'token_parts': len(open(sa + '/token').read().split('.')),\n"
        "       'ca': open(sa + '/ca.crt').read().startswith('-----BEGIN CERTIFICATE-----')}\n"
        "try:\n"
        "    open('/etc/cfg/new', 'w')\n"
        "except OSError as e:\n"
        "    out['write_errno'] = e.errno\n"
        "print('files', json.dumps(out, sort_keys=True), flush=True)\n"
        "time.sleep(600)\n"
    )
    devcluster.apply(
        pod(
            "apidata",
            ns,
            [
                {
                    "name": "c",
                    "args": [script],
                    "volumeMounts": [
                        {"name": "cfg", "mountPath": "/etc/cfg"},
                        {"name": "creds", "mountPath": "/etc/creds"},
                    ],
                }
            ],
            securityContext={"runAsUser": 1000, "fsGroup": 2000},
            volumes=[
                {
                    "name": "cfg",
                    "configMap": {
                        "name": "settings",
                        "items": [{"key": "a.conf", "path": "renamed.conf", "mode": 0o600}],
                    },
                },
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            ],
        )
    )
    files = json.loads(log_line(devcluster, ns, "apidata", "c", "files ").removeprefix("files "))
    assert files == {
        "cfg": ["renamed.conf"],  # items: only the listed key, under its path
        "renamed": "alpha",
        "renamed_mode": "0o640",  # the item's mode, plus g+r for the fsGroup
        "password": "s3cret",
        "password_mode": "0o440",  # defaultMode 0400, plus g+r for the fsGroup
        "sa": ["ca.crt", "namespace", "token"],
        "namespace": ns,
        "token_parts": 3,
        "ca": True,
        "write_errno": 30,  # API data volumes are mounted read-only
    }
    devcluster.kubectl("delete", "pod", "apidata", "-n", ns, "--wait=false")


def test_read_write_once_claim_attaches_to_one_node_and_keeps_its_data(devcluster: Cluster, ns: str) -> None:
    devcluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "store", "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
    )
    pvc = devcluster.wait_for(
        lambda: (
            (p := devcluster.get("pvc", "store", "-n", ns)).get("status", {}).get("phase") == "Bound" and p
        ),
        what="claim Bound",
    )
    pv_name = pvc["spec"]["volumeName"]
    assert pvc["spec"]["storageClassName"] == "devcluster-local"  # the default class
    mounts = [{"name": "store", "mountPath": "/store"}]
    vols = [{"name": "store", "persistentVolumeClaim": {"claimName": "store"}}]
    write = "import time\nopen('/store/kept', 'w').write('first pod')\nprint('wrote', flush=True)\ntime.sleep(600)\n"
    no_fs_group = (
        "import time\ntry:\n    open('/store/x', 'w')\nexcept PermissionError as e:\n    print('denied', e.errno, flush=True)\n"
        "time.sleep(600)\n"
    )
    read = "import time\nprint('read', open('/store/kept').read(), flush=True)\ntime.sleep(600)\n"
    user = {"runAsUser": 1000, "runAsGroup": 1000}
    # A fresh disk's root belongs to root: uid 1000 cannot write it without fsGroup ...
    devcluster.apply(pod("nofsgroup", ns, [{"name": "c", "args": [no_fs_group], "volumeMounts": mounts}],
                         securityContext=user, volumes=vols))  # fmt: skip
    assert log_line(devcluster, ns, "nofsgroup", "c", "denied") == "denied 13"
    devcluster.kubectl("delete", "pod", "nofsgroup", "-n", ns, "--timeout=60s")
    # ... and can with it.
    sc = {**user, "fsGroup": 1000}
    devcluster.apply(
        pod(
            "first",
            ns,
            [{"name": "c", "args": [write], "volumeMounts": mounts}],
            securityContext=sc,
            volumes=vols,
        )
    )
    log_line(devcluster, ns, "first", "c", "wrote")
    # Another node: the attach/detach controller's Multi-Attach error, the pod stays ContainerCreating.
    devcluster.apply(pod("second", ns, [{"name": "c", "args": [read], "volumeMounts": mounts}],
                         securityContext=sc, volumes=vols, nodeName="a100-0"))  # fmt: skip
    message = f'Multi-Attach error for volume "{pv_name}" Volume is already used by pod(s) first'
    event = devcluster.wait_for(
        lambda: next(
            (e for e in events(devcluster, ns, "second") if e["reason"] == "FailedAttachVolume"), None
        ),
        what="FailedAttachVolume event",
    )
    assert (event["type"], event["message"]) == ("Warning", message)
    time.sleep(2)
    assert container_state(devcluster, ns, "second", "c") == {"waiting": {"reason": "ContainerCreating"}}
    # A second pod on the same node may use it (ReadWriteOnce is per node).
    devcluster.apply(
        pod(
            "samenode",
            ns,
            [{"name": "c", "args": [read], "volumeMounts": mounts}],
            securityContext=sc,
            volumes=vols,
        )
    )
    assert log_line(devcluster, ns, "samenode", "c", "read ") == "read first pod"
    devcluster.kubectl("delete", "pod", "first", "samenode", "-n", ns, "--timeout=60s")
    # Detached from cpu-0: the pod on a100-0 starts and finds the data of the first pod.
    assert log_line(devcluster, ns, "second", "c", "read ", timeout=30) == "read first pod"
    devcluster.kubectl("delete", "pod", "second", "-n", ns, "--timeout=60s")
    devcluster.kubectl("delete", "pvc", "store", "-n", ns, "--timeout=60s")
    devcluster.wait_for(
        lambda: devcluster.kubectl("get", "pv", pv_name, check=False).returncode != 0, what="PV deleted"
    )
    assert not (devcluster.layout.storage / pv_name).exists()


# Writes what happens to the shared hostPath file, with wall-clock times.
GRACEFUL = (
    "import os, signal, time\n"
    "def note(what):\n"
    "    with open('/out/events', 'a') as f: f.write(f'{what} {time.time():.3f}\\n')\n"
    "signal.signal(signal.SIGTERM, lambda *a: note('term'))\n"
    "note('started')\n"
    "while True:\n"
    "    note('alive'); time.sleep(0.2)\n"
)


def _graceful_pod(
    name: str, ns: str, out: Path, grace: int, pre_stop: dict[str, Any] | None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "c",
        "args": [GRACEFUL],
        "volumeMounts": [{"name": "out", "mountPath": "/out"}],
    }
    if pre_stop:
        container["lifecycle"] = {"preStop": pre_stop}
    return pod(name, ns, [container], terminationGracePeriodSeconds=grace,
               volumes=[{"name": "out", "hostPath": {"path": str(out), "type": "Directory"}}])  # fmt: skip


def _events(out: Path) -> list[tuple[str, float]]:
    lines = (out / "events").read_text().splitlines() if (out / "events").exists() else []
    return [(w, float(t)) for w, t in (ln.split() for ln in lines)]


def _delete_and_time(c: Cluster, ns: str, name: str, timeout: int) -> tuple[float, float, int]:
    """Delete the pod; (start, when the object was gone, the container's pid)."""
    pid = next(p for k, p in c.pids().items() if k.startswith(f"pod:{ns}/{name}/"))
    start = time.time()
    c.kubectl("delete", "pod", name, "-n", ns, f"--timeout={timeout}s")
    return start, time.time(), pid


def test_pre_stop_runs_first_then_sigterm_with_the_rest_of_the_grace_period(
    devcluster: Cluster, ns: str, tmp_path: Path
) -> None:
    out = tmp_path / "graceful"
    out.mkdir()
    out.chmod(0o777)
    hook = {"exec": {"command": ["sh", "-c", "echo prestop $(date +%s.%N) >> /out/events; sleep 2"]}}
    devcluster.apply(_graceful_pod("graceful", ns, out, grace=6, pre_stop=hook))
    devcluster.wait_for(lambda: any(w == "alive" for w, _ in _events(out)), what="container running")
    start, gone, pid = _delete_and_time(devcluster, ns, "graceful", 60)
    assert not alive(pid)
    seen = _events(out)
    kinds = [w for w, _ in seen]
    assert "prestop" in kinds and "term" in kinds
    t_prestop = next(t for w, t in seen if w == "prestop")
    t_term = next(t for w, t in seen if w == "term")
    last_alive = max(t for w, t in seen if w == "alive")
    assert kinds.index("prestop") < kinds.index("term")
    assert t_prestop - start < 1.5
    assert 1.8 < t_term - t_prestop < 3.5  # SIGTERM after the 2 s hook
    # The process handles SIGTERM and runs on: SIGKILL when the 6 s (hook included) are spent.
    assert 5.3 < last_alive - start < 9.0, seen
    assert gone - start >= last_alive - start


def test_long_grace_period_is_not_capped(devcluster: Cluster, ns: str, tmp_path: Path) -> None:
    out = tmp_path / "longgrace"
    out.mkdir()
    out.chmod(0o777)
    devcluster.apply(_graceful_pod("longgrace", ns, out, grace=33, pre_stop=None))
    devcluster.wait_for(lambda: any(w == "alive" for w, _ in _events(out)), what="container running")
    start, gone, pid = _delete_and_time(devcluster, ns, "longgrace", 90)
    assert not alive(pid)
    seen = _events(out)
    last_alive = max(t for w, t in seen if w == "alive")
    assert 32.0 < last_alive - start < 37.0, seen  # more than the old caps (10 s in tests, 30 s)
    assert gone - start > 32.0
    assert os.path.exists(out / "events")


def test_a_volume_over_the_checkouts_parent_leaves_the_program_running(devcluster: Cluster, ns: str) -> None:
    """The stand-in image's program is the checkout (and its venv): a clone under /tmp must keep
    running when a pod mounts an emptyDir at /tmp, as the chart's operator pod does."""
    parent = str(Path(__file__).resolve().parents[3])
    assert parent != "/", "the checkout's parent is the root: nothing to mount over"
    spec = pod(
        "program-under-volume",
        ns,
        [
            {
                "name": "c",
                "args": [f"import os; print('listing', sorted(os.listdir({parent!r})))"],
                "volumeMounts": [{"name": "scratch", "mountPath": parent}],
            }
        ],
        volumes=[{"name": "scratch", "emptyDir": {}}],
        restartPolicy="Never",
    )
    devcluster.apply(spec)
    line = log_line(devcluster, ns, "program-under-volume", "c", "listing")
    assert Path(__file__).resolve().parents[2].name in line  # the checkout, bound again on the volume
    devcluster.kubectl("delete", "pod", "program-under-volume", "-n", ns, "--wait=false")
