"""Shared fixtures for all tests.

``devcluster`` (session scope): a real Kubernetes control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler) with fake GPU nodes and the process kubelet, in its own
temp state folder and its own 127.x pod-address range, so several test sessions can run at once.
Needs the binaries from ``python -m devcluster build`` (``make test`` builds them first).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devcluster import TEST_KUBELET, Cluster


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running devcluster for the whole test session; stopped (nothing left running) at the end."""
    state_dir = tmp_path_factory.mktemp("devcluster")
    # owner_pid: the cluster stops by itself should this pytest process die without cleanup.
    with Cluster.start(state_dir, kubelet=TEST_KUBELET, owner_pid=os.getpid()) as cluster:
        yield cluster
