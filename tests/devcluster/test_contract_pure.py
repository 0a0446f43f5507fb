"""Unit tests of the pod contract's pure parts: credentials, runAsNonRoot, quantities, API-data
payloads, bind order and subPath, attachments, the sleep hook, the image table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devcluster import images, podroot, security
from devcluster.podenv import ContainerConfigError
from devcluster.probes import run_hook
from devcluster.volumes import Attachments, HostVolume, MountError, payload, quantity_bytes

ROOT_IMAGE = images.ImageEntry("x/root", ("true",))
SERVER = images.server_entry(("true",))


def _pod(pod_sc: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", **meta},
        "spec": {"securityContext": pod_sc or {}, "containers": [{"name": "c"}]},
    }


def test_credentials_container_overrides_pod_and_groups_add_fs_group() -> None:
    pod = _pod({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "supplementalGroups": [3000, 2000]})
    creds = security.credentials(pod, {"name": "c", "securityContext": {"runAsUser": 7}}, SERVER)
    assert (creds.uid, creds.gid, creds.groups, creds.home) == (7, 1000, (1000, 2000, 3000), "/")


def test_credentials_default_to_the_image_user() -> None:
    creds = security.credentials(_pod(), {"name": "c"}, SERVER)
    assert (creds.uid, creds.gid, creds.groups, creds.home) == (10001, 10001, (10001,), "/home/omega")
    # runAsUser without runAsGroup: a uid the image's passwd does not know gets gid 0.
    creds = security.credentials(_pod({"runAsUser": 1000}), {"name": "c"}, SERVER)
    assert (creds.uid, creds.gid, creds.home) == (1000, 0, "/")


def test_run_as_non_root_messages_are_the_kubelets() -> None:
    with pytest.raises(ContainerConfigError) as e:
        security.credentials(_pod({"runAsNonRoot": True}), {"name": "c"}, ROOT_IMAGE)
    assert (
        str(e.value)
        == 'container has runAsNonRoot and image will run as root (pod: "p_ns(u-1)", container: c)'
    )
    with pytest.raises(ContainerConfigError) as e:
        security.credentials(_pod({"runAsNonRoot": True, "runAsUser": 0}), {"name": "c"}, SERVER)
    assert str(e.value) == 'container\'s runAsUser breaks non-root policy (pod: "p_ns(u-1)", container: c)'
    # A non-root image, or a non-root runAsUser, passes; the container may turn the check off.
    assert security.credentials(_pod({"runAsNonRoot": True}), {"name": "c"}, SERVER).uid == 10001
    sc = {"name": "c", "securityContext": {"runAsNonRoot": False}}
    assert security.credentials(_pod({"runAsNonRoot": True}), sc, ROOT_IMAGE).uid == 0


def test_quantities() -> None:
    assert quantity_bytes("64Mi") == 64 * 2**20
    assert quantity_bytes("1G") == 10**9
    assert quantity_bytes("1e3") == 1000
    assert quantity_bytes("1.5Gi") == 3 * 2**29
    assert quantity_bytes(512) == 512
    with pytest.raises(ValueError):
        quantity_bytes("lots")


def test_payload_items_modes_and_missing_keys() -> None:
    data = {"a": b"1", "b": b"2"}
    assert payload(data, None, 0o644, "configmap ns/x", False) == {"a": (b"1", 0o644), "b": (b"2", 0o644)}
    items = [{"key": "a", "path": "dir/a.conf", "mode": 0o600}, {"key": "b", "path": "b"}]
    assert payload(data, items, 0o400, "x", False) == {"dir/a.conf": (b"1", 0o600), "b": (b"2", 0o400)}
    with pytest.raises(MountError, match="non-existent key: z"):
        payload(data, [{"key": "z", "path": "z"}], 0o644, "configmap ns/x", False)
    assert payload(data, [{"key": "z", "path": "z"}], 0o644, "x", True) == {}


def test_binds_order_sub_path_read_only_and_the_token_mount(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {}}
    container = {
        "name": "c",
        "terminationMessagePath": "/tmp/msg",
        "volumeMounts": [
            {"name": "data", "mountPath": "/data/deep/er"},
            {"name": "data", "mountPath": "/data", "readOnly": True},
            {"name": "cfg", "mountPath": "/etc/cfg"},
            {"name": "data", "mountPath": "/sub", "subPath": "models/tiny"},
        ],
    }
    vols = {
        "data": HostVolume(str(tmp_path), creates_sub_paths=True),
        "cfg": HostVolume("/host/cfg", read_only=True),
        "kube-api-access-devcluster": HostVolume("/host/sa", read_only=True),
    }
    out = podroot.binds(pod, container, vols, [("/layer/home", "/home/omega")], "/host/tlog")
    assert [b["target"] for b in out] == [
        "/home/omega", "/data", "/sub", "/etc/cfg", "/data/deep/er",
        "/var/run/secrets/kubernetes.io/serviceaccount", "/tmp/msg",
    ]  # fmt: skip
    by = {b["target"]: b for b in out}
    assert by["/data"]["read_only"] and not by["/data/deep/er"]["read_only"]
    assert by["/etc/cfg"]["read_only"]  # API data volumes are read-only
    assert by["/sub"]["source"] == str(tmp_path / "models" / "tiny") and "make_source_mode" in by["/sub"]
    with pytest.raises(ValueError, match="subPath"):
        podroot.binds(pod, {"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/x", "subPath": "../up"}]},
                      vols, [], "/t")  # fmt: skip
    off = {"metadata": {}, "spec": {"automountServiceAccountToken": False}}
    assert podroot.pod_volumes(off) == [] and podroot.volume_mounts(off, {"name": "c"}) == []


def test_attachments_are_per_node() -> None:
    a = Attachments()
    assert a.attach("pv-1", "node-a", "ns/p1/u1", "ns", "p1") is None
    assert a.attach("pv-1", "node-a", "ns/p2/u2", "ns", "p2") is None  # same node: fine
    error = a.attach("pv-1", "node-b", "ns/p3/u3", "ns", "p3")
    assert error == 'Multi-Attach error for volume "pv-1" Volume is already used by pod(s) p1, p2'
    other = a.attach("pv-1", "node-b", "other/p4/u4", "other", "p4")
    assert other is not None and "exclusively attached to one node" in other
    a.detach("ns/p1/u1")
    a.detach("ns/p2/u2")
    assert a.attach("pv-1", "node-b", "ns/p3/u3", "ns", "p3") is None


def test_sleep_hook_waits_its_seconds_within_the_grace_period() -> None:
    with httpx.Client() as http:
        t0 = time.monotonic()
        assert run_hook({"sleep": {"seconds": 5}}, {}, "127.0.0.1", http, {}, None, 0.3, lambda: False) == (
            True,
            "",
        )
        assert 0.25 < time.monotonic() - t0 < 1.5
        ok, why = run_hook({"tcpSocket": {"port": 1}}, {}, "127.0.0.1", http, {}, None, 1, lambda: False)
        assert not ok and "unsupported" in why


def test_stand_in_for_a_known_image_keeps_its_user_and_directories() -> None:
    entry = images.stand_in("r.io/omega-vlm-server:v1-sdpa", ("sleep", "1"), {"X": "1"})
    assert (entry.uid, entry.gid, entry.workdir) == (10001, 10001, "/home/omega")
    assert entry.env["X"] == "1" and entry.env["HF_HOME"] == "/home/omega/.cache/huggingface"
    assert [d.path for d in entry.dirs] == ["/home/omega"]
    assert images.stand_in("r.io/other:1", ("true",), {}).uid == 0
    assert images.stand_in("r.io/other:1", ("true",), {}, uid=4242).gid == 4242
    assert images.ImageEntry.from_dict(entry.to_dict()) == entry


def test_passwd_files_add_the_image_users_to_the_hosts() -> None:
    host_passwd = "root:x:0:0:root:/root:/bin/bash\n"
    host_group = "root:x:0:\n"
    passwd, group = podroot.passwd_files(SERVER, host_passwd, host_group)
    assert passwd == host_passwd + "omega:x:10001:10001::/home/omega:/usr/sbin/nologin\n"
    assert group == host_group + "omega:x:10001:\n"
    operator = images.stand_in("r.io/omega-vlm/omega-vlm-operator:1.0", ("true",), {})
    assert (operator.uid, operator.home(10001)) == (10001, "/nonexistent")


def test_the_images_program_stays_visible_under_a_volume_mounted_over_its_host_path() -> None:
    program = ("/tmp/clone", "/tmp/clone/.venv", "/opt/python")
    assert podroot.program_binds(["/tmp", "/data"], program) == [
        {"source": "/tmp/clone", "target": "/tmp/clone", "read_only": True},
        {"source": "/tmp/clone/.venv", "target": "/tmp/clone/.venv", "read_only": True},
    ]
    assert podroot.program_binds(["/tmp/clone/data", "/tmpfoo", "/var"], program) == []
    assert podroot.under("/tmp/clone", "/") and not podroot.under("/tmpfoo", "/tmp")
