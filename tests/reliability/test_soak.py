"""The soak's short run in CI: 30 s at 2x the tiny server's capacity with 10% of clients disconnecting.

The long run (20 minutes) is `python -m bench.reliability soak`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.reliability.__main__ import SOAK_ENV
from bench.reliability.soak import SoakReport, read_gauges, soak
from bench.reliability.target import API_KEY, TinyServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_report_flags_5xx_missing_retry_after_memory_growth_and_busy_gauges() -> None:
    report = SoakReport(warmup_s=10)
    report.by_status.update({"200": 5, "500": 1})
    report.missing_retry_after = 2
    report.rss_kib = [(5, 100), (10, 1000), (60, 1060)]
    report.gauges_after = {"omega_server_queue_depth": 3.0}
    why = report.violations()
    assert any("500" in w for w in why) and any("Retry-After" in w for w in why)
    assert any("memory grew 6.0%" in w for w in why) and any("queue_depth" in w for w in why)


def test_read_gauges_sums_label_sets() -> None:
    text = 'omega_server_queue_depth 2.0\nomega_server_requests_running{model="a"} 1.0\nother 5\n'
    assert read_gauges(text) == {"omega_server_queue_depth": 2.0, "omega_server_requests_running": 1.0}


def test_overload_gets_only_200_and_429_and_leaves_nothing_behind(tmp_path: Path) -> None:
    server = TinyServer(tmp_path, env=SOAK_ENV)
    try:
        server.wait_ready()
        report = asyncio.run(soak(server.url, server.proc.pid, api_key=API_KEY, seconds=30, warmup_s=10))
        assert server.alive()
    finally:
        server.stop()
    assert report.violations() == [], report.as_dict()
    assert report.by_status["429"] > 0, "2x capacity should overflow the queue"
    assert report.disconnected > 0
