"""Shared fixtures for the server tests: tiny random checkpoints built in code (nothing downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from omega_server import tiny

from tests.omega_server.live import AUTH, ThreadServer, shared_server

# Tiny models run fastest single-threaded, and the CI machine has 2 shared cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``tiny_checkpoint("qwen2_5_vl") -> Path`` of a tiny random checkpoint of that family.

    Built once per session and family (see ``omega_server.tiny.ARCHES``); treat the directory as read-only.
    """
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    cache: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = tiny.build(arch, root / arch)
        return cache[arch]

    return make


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> ThreadServer:
    """The session's one shared tiny server (``live.shared_server``), started on first use."""
    return shared_server(request)


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    """An httpx client of the shared server with the API key (test_openai_client has its own)."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c
