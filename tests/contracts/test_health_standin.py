"""The health stand-in (tests/health_standin.py) serves what the real server would, read by the operator."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from omega_operator.health_report import FLASH_BACKEND, parse_report

from tests import health_standin


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return health_standin.write_bodies(tmp_path_factory.mktemp("standin") / "bodies.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def start(bodies: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(**env: str) -> str:
        port = _free_port()
        full = {"PATH": os.environ["PATH"], "HOST": "127.0.0.1", "PORT": str(port), **env}
        procs.append(subprocess.Popen(health_standin.command(sys.executable, bodies), env=full))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/live", timeout=1)
                return url
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("stand-in did not listen")

    yield run
    for p in procs:
        p.terminate()
        p.wait(10)


@pytest.mark.parametrize("attn_impl", ["auto", "flash_attention_2"])
def test_a_flash_request_is_ready_on_flash(start, attn_impl: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(start(ATTN_IMPL=attn_impl) + "/health")
    report = parse_report(r.content)
    assert r.status_code == 200 and report is not None and report.ready
    assert report.attn == FLASH_BACKEND and report.attn_requested == attn_impl
    assert report.flash_requested and not report.flash_failed


def test_a_broken_node_reports_the_flash_failure_and_serves_sdpa(start) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(start(ATTN_IMPL="auto", OMEGA_STANDIN_FLASH="broken") + "/health")
    report = parse_report(r.content)
    assert r.status_code == 200 and report is not None and report.ready
    assert report.attn == "sdpa" and report.flash_failed
    assert report.flash_attn.error_kind == "import_error"


def test_sdpa_and_loading(start) -> None:  # type: ignore[no-untyped-def]
    sdpa = parse_report(httpx.get(start(ATTN_IMPL="sdpa") + "/health").content)
    assert sdpa is not None and sdpa.ready and sdpa.attn == "sdpa" and not sdpa.flash_requested
    url = start(ATTN_IMPL="auto", OMEGA_STANDIN_LOAD_SECONDS="30")
    r = httpx.get(url + "/health")
    loading = parse_report(r.content)
    assert r.status_code == 503 and loading is not None and not loading.ready and loading.status == "loading"
    assert httpx.get(url + "/live").status_code == 200
    assert httpx.get(url + "/v1/models").status_code == 404
