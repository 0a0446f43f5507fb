"""Command lines of etcd and the three control-plane binaries (pure), and free loopback ports."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

SERVICE_CIDR = "10.96.0.0/16"

#: The control-plane processes (their names in the pid registry), in the order they are stopped.
PROCESSES = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")

# Controllers off: the ones that need a cloud, a real network, or real volumes (DESIGN.md section 5).
# The node-lifecycle controller stays on, as in a real cluster: the node agent's Lease heartbeats
# keep the nodes Ready, and a node whose agent died turns NotReady and is tainted.
CONTROLLERS = (
    "*,-nodeipam,-cloud-node-lifecycle,-service,-route,-attachdetach,"
    "-persistentvolume-binder,-persistentvolume-expander"
)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` right now (the kernel picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Ports:
    """Loopback ports of one cluster."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(*free_ports(5))


@dataclass(frozen=True)
class Layout:
    """Files of one cluster's state folder."""

    state: Path

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.state / "etcd"

    @property
    def token_file(self) -> Path:
        return self.pki / "tokens.csv"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state / "state.json"

    @property
    def pids(self) -> Path:
        return self.state / "pids.json"

    @property
    def images(self) -> Path:
        return self.state / "images.json"

    @property
    def pods(self) -> Path:
        return self.state / "pods"

    @property
    def kubelet(self) -> Path:
        return self.state / "kubelet"

    @property
    def storage(self) -> Path:
        return self.state / "storage"


def etcd_argv(etcd: str, layout: Layout, ports: Ports) -> list[str]:
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        etcd,
        "--name=devcluster",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=devcluster={peer}",
        "--listen-metrics-urls=",
        "--log-level=warn",
        "--logger=zap",
        "--snapshot-count=10000",
    ]


def apiserver_argv(bin_dir: Path, layout: Layout, ports: Ports, extra: tuple[str, ...] = ()) -> list[str]:
    pki = layout.pki
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        "--insecure-port=0",
        f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        # Fills kube-system/extension-apiserver-authentication, which the other components read.
        f"--requestheader-client-ca-file={pki / 'ca.crt'}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--token-auth-file={layout.token_file}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--endpoint-reconciler-type=none",
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        "--kubelet-preferred-address-types=InternalIP",
        "--profiling=false",
        "--v=1",
        *extra,
    ]


def _component_common(kubeconfig: Path, port: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--port=0",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(
    bin_dir: Path, layout: Layout, ports: Ports, extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        str(bin_dir / "kube-controller-manager"),
        *_component_common(layout.kubeconfig, ports.controller_manager),
        f"--controllers={CONTROLLERS}",
        f"--service-account-private-key-file={layout.pki / 'sa.key'}",
        f"--root-ca-file={layout.pki / 'ca.crt'}",
        f"--cert-dir={layout.pki / 'kcm'}",
        "--use-service-account-credentials=false",
        "--concurrent-deployment-syncs=5",
        "--concurrent-replicaset-syncs=5",
        *extra,
    ]


def node_loss_flags(timings: dict[str, float] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(apiserver, controller-manager) flags for shortened node-loss timeouts (``Cluster.start(node_loss=)``):
    ``grace_s`` (node-monitor grace period, 40 s in Kubernetes) and ``toleration_s`` (the default
    not-ready/unreachable toleration of pods, 300 s)."""
    if not timings:
        return (), ()
    tol = int(timings["toleration_s"])
    api = (f"--default-not-ready-toleration-seconds={tol}", f"--default-unreachable-toleration-seconds={tol}")
    kcm = (f"--node-monitor-grace-period={int(timings['grace_s'])}s", "--node-monitor-period=1s")
    return api, kcm


def scheduler_argv(bin_dir: Path, layout: Layout, ports: Ports) -> list[str]:
    return [
        str(bin_dir / "kube-scheduler"),
        *_component_common(layout.kubeconfig, ports.scheduler),
        f"--cert-dir={layout.pki / 'scheduler'}",
    ]
