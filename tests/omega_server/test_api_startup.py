"""Start-up as the operator sees it: /live and a 503 /health while loading, the real attention backend
after a flash-attn failure (missing or broken package), and a clean exit on SIGTERM.

The flash cases run the real entry point, `python -m omega_server`, on a tiny checkpoint.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import omega_server.app as app_module
import pytest
from omega_operator.health_report import parse_report

from tests.omega_server.live import ProcessServer, ThreadServer, image_message, tiny


def _assert_sdpa_after_flash_failure(health: dict[str, Any]) -> None:
    assert health["status"] == "ready" and health["ready"] is True
    assert health["attn"] == "sdpa"
    assert health["attn_requested"] == "flash_attention_2"
    flash = health["flash_attn"]
    assert flash["loaded"] is False
    assert isinstance(flash["error"], str) and flash["error"], flash
    # The operator reads this very body to decide on a rollback (one health contract).
    report = parse_report(json.dumps(health))
    assert report is not None and report.flash_failed and report.flash_error == flash["error"]


def _metric_lines(url: str) -> list[str]:
    return httpx.get(f"{url}/metrics").text.splitlines()


def _serves_a_chat(url: str) -> None:
    r = httpx.post(
        f"{url}/v1/chat/completions", json={"messages": [image_message()], "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 200, r.text


def test_flash_attention_2_falls_back_to_sdpa_and_says_so(request: pytest.FixtureRequest) -> None:
    server = ProcessServer({"MODEL_PATH": str(tiny(request)), "ATTN_IMPL": "flash_attention_2"})
    try:
        health = server.wait_ready()
        _assert_sdpa_after_flash_failure(health)
        assert health["flash_attn"]["available"] is False
        _serves_a_chat(server.url)
        lines = _metric_lines(server.url)
        assert 'omega_server_attention_info{backend="sdpa",requested="flash_attention_2"} 1.0' in lines
        assert "omega_server_flash_attn_load_failures_total 1.0" in lines
        # SIGTERM: a graceful, successful exit.
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()


BROKEN_INIT = '''"""A flash_attn install whose CUDA extension is missing (as after a mismatched wheel)."""
__version__ = "2.8.3"
from flash_attn.flash_attn_interface import flash_attn_func, flash_attn_varlen_func  # noqa: E402,F401
'''
BROKEN_INTERFACE = """import flash_attn_2_cuda as flash_attn_gpu  # the compiled extension is not there
"""


@pytest.fixture
def broken_flash_attn(tmp_path: Path) -> str:
    """A directory that, on PYTHONPATH, makes an installed-but-broken flash_attn 2.8.3."""
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(BROKEN_INIT)
    (pkg / "flash_attn_interface.py").write_text(BROKEN_INTERFACE)
    dist = tmp_path / "flash_attn-2.8.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flash_attn\nVersion: 2.8.3\n")
    (dist / "RECORD").write_text("")
    (dist / "top_level.txt").write_text("flash_attn\n")
    return str(tmp_path)


def test_broken_flash_attn_package_falls_back_the_same_way(
    request: pytest.FixtureRequest, broken_flash_attn: str
) -> None:
    server = ProcessServer(
        {"MODEL_PATH": str(tiny(request)), "ATTN_IMPL": "flash_attention_2"},
        extra_pythonpath=broken_flash_attn,
    )
    try:
        health = server.wait_ready()
        _assert_sdpa_after_flash_failure(health)
        _serves_a_chat(server.url)
        assert "omega_server_flash_attn_load_failures_total 1.0" in _metric_lines(server.url)
    finally:
        server.stop()


@pytest.fixture
def gated_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Hold the real engine load until the test releases it, to look at the server while loading."""
    gate = threading.Event()
    real = app_module._load_engine

    def load(settings: Any) -> Any:
        gate.wait(60)
        return real(settings)

    monkeypatch.setattr(app_module, "_load_engine", load)
    yield gate
    gate.set()


def test_health_is_503_with_body_while_loading(
    request: pytest.FixtureRequest, gated_load: threading.Event
) -> None:
    env = {"MODEL_PATH": str(tiny(request)), "ATTN_IMPL": "flash_attention_2", "SERVED_MODEL_NAME": "m"}
    server = ThreadServer(env)
    server.thread.start()
    try:
        url = server.url
        live = _get_when_listening(f"{url}/live")
        assert live.status_code == 200
        r = httpx.get(f"{url}/health")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "loading" and body["ready"] is False
        assert body["attn"] is None and body["flash_attn"] is None  # unknown yet: nothing to act on
        assert body["attn_requested"] == "flash_attention_2" and body["model"] == "m"
        report = parse_report(r.content)  # a loading server is no flash failure (yet)
        assert report is not None and not report.ready and not report.flash_failed
        chat = httpx.post(f"{url}/v1/chat/completions", json={"messages": [image_message()]})
        assert chat.status_code == 503 and "loading" in chat.json()["error"]["message"]
        assert "retry-after" in chat.headers
        gated_load.set()
        from tests.omega_server.live import wait_ready

        assert wait_ready(url)["attn"] == "sdpa"
        _serves_a_chat(url)
    finally:
        gated_load.set()
        server.stop()


def _get_when_listening(url: str, timeout: float = 30) -> httpx.Response:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_engine_load_failure_reports_failed(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """In-process view of a load failure: /health 503 `failed` with the reason (the CLI exits instead)."""
    empty = tmp_path / "empty-model"
    empty.mkdir()
    server = ThreadServer({"MODEL_PATH": str(empty)})
    server.thread.start()
    try:
        import time

        _get_when_listening(f"{server.url}/live")
        deadline = time.monotonic() + 60
        while (body := httpx.get(f"{server.url}/health").json())["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert body["status"] == "failed" and body["ready"] is False
        assert "MODEL_PATH" in body["error"]
        assert httpx.get(f"{server.url}/health").status_code == 503
    finally:
        server.stop()


def test_dead_engine_is_503_on_health_and_api(request: pytest.FixtureRequest) -> None:
    server = ThreadServer({"MODEL_PATH": str(tiny(request)), "ATTN_IMPL": "sdpa"}).start()
    try:
        server.engine.shutdown()
        r = httpx.get(f"{server.url}/health")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "dead" and body["ready"] is False and body["error"]
        assert body["attn"] == "sdpa"  # what ran is still reported
        chat = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [image_message()]})
        assert chat.status_code == 503
        assert chat.json()["error"]["type"] == "service_unavailable_error"
        # Nothing in-process brings a dead engine back: liveness fails, so the kubelet restarts it.
        live = httpx.get(f"{server.url}/live")
        assert live.status_code == 503 and live.json() == {"status": "dead"}
    finally:
        server.stop()
