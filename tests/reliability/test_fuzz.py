"""The fuzzer's short run in CI: generated bad requests against the real server on the tiny model.

The long run (5,000 requests) is `python -m bench.reliability fuzz` (bench/README.md, "Reliability").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.reliability.fuzz import judge, run_fuzz
from bench.reliability.fuzz_cases import Case
from bench.reliability.target import API_KEY, TinyServer

CASE = Case("field_mutation", b"{}")
OPENAI_ERROR = json.dumps({"error": {"message": "bad", "type": "invalid_request_error"}}).encode()


def test_judge_accepts_a_4xx_with_an_openai_body_and_a_finished_stream() -> None:
    assert judge(CASE, 400, OPENAI_ERROR, streamed=False) is None
    assert judge(CASE, 200, b"data: {}\n\ndata: [DONE]\n\n", streamed=True) is None


@pytest.mark.parametrize(
    ("status", "body", "streamed", "why"),
    [
        (500, OPENAI_ERROR, False, "500"),
        (503, OPENAI_ERROR, False, "503"),
        (400, b"Bad Request", False, "OpenAI-style"),
        (422, json.dumps({"detail": []}).encode(), False, "OpenAI-style"),
        (400, json.dumps({"error": {"message": 1}}).encode(), False, "message/type"),
        (200, b"data: {}\n\n", True, "without [DONE]"),
        (302, b"", False, "unexpected status"),
    ],
)
def test_judge_flags_what_breaks_the_contract(status: int, body: bytes, streamed: bool, why: str) -> None:
    verdict = judge(CASE, status, body, streamed)
    assert verdict is not None and why in verdict


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyServer]:
    server = TinyServer(Path(tmp_path_factory.mktemp("fuzz")))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_generated_bad_requests_get_openai_errors_and_the_engine_lives(tiny_server: TinyServer) -> None:
    report = run_fuzz(tiny_server.url, requests=250, api_key=API_KEY, seed_value=1)
    assert report.sent == 250
    assert report.violations == [], report.violations[:5]
    assert report.health_after == 200 and report.valid_after == 200
    assert tiny_server.alive()
    assert all(report.by_family[f] == 50 for f in ("valid", "fields", "messages", "images", "framing"))
    assert report.by_status[200] >= 40  # the valid family was served while the bad ones were refused
