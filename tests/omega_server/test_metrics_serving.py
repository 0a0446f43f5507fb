"""The server's autoscaling and SRE metrics on its real /metrics (tiny Qwen2-VL checkpoint, real engine):
running and waiting requests, KV slot and token usage, inter-token and end-to-end latency, refusals
by reason, preemptions, and the info series with the model, attention backend and decode path."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from omega_server.metrics import REJECTION_REASONS
from prometheus_client.parser import text_string_to_metric_families

from tests.omega_server.live import AUTH, SHARED_ENV, ThreadServer, image_message
from tests.omega_server.test_api import LONG_TOKENS, _flood, _wait_idle, greedy

MAX_BATCH = int(SHARED_ENV["MAX_BATCH_SIZE"])
MAX_LEN = int(SHARED_ENV["MAX_MODEL_LENGTH"])


@pytest.fixture(scope="module")
def long_body() -> dict[str, Any]:
    """test_api's long greedy request (the tiny model's EOS does not come in LONG_TOKENS)."""
    return {"messages": [image_message()], "max_tokens": LONG_TOKENS, "temperature": 0}


def _samples(server: ThreadServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _value(server: ThreadServer, name: str, **labels: str) -> float:
    return _samples(server).get((name, tuple(sorted(labels.items()))), 0.0)


def _types(server: ThreadServer) -> dict[str, str]:
    text = httpx.get(f"{server.url}/metrics").text
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_the_new_families_are_exported_with_their_types(server: ThreadServer) -> None:
    types = _types(server)
    for name, kind in {
        "omega_server_requests_running": "gauge",
        "omega_server_requests_waiting": "gauge",
        "omega_server_kv_slots_usage_ratio": "gauge",
        "omega_server_kv_token_usage_ratio": "gauge",
        "omega_server_inter_token_latency_seconds": "histogram",
        "omega_server_e2e_request_latency_seconds": "histogram",
        "omega_server_requests_rejected": "counter",
        "omega_server_preemptions": "counter",
        "omega_server_info": "gauge",
    }.items():
        assert types.get(name) == kind, (name, types.get(name))


def test_info_names_the_model_backend_and_decode_path(server: ThreadServer) -> None:
    info = server.engine.info
    assert info.kv_cache == "dynamic" and not info.cuda_graphs  # the tiny server on the CPU
    series = {k: v for k, v in _samples(server).items() if k[0] == "omega_server_info"}
    assert len(series) == 1, series
    (((_, labels), value),) = series.items()
    got = dict(labels)
    assert value == 1
    assert got["model"] == "tiny-vlm" and got["attention_backend"] == "sdpa"
    assert got["decode_path"] == "dynamic" and got["model_type"] == "qwen2_vl"
    assert got["dtype"] == info.dtype.removeprefix("torch.") and got["version"]


def test_preemptions_exported_as_zero(server: ThreadServer) -> None:
    assert ("omega_server_preemptions_total", ()) in _samples(server)
    assert _value(server, "omega_server_preemptions_total") == 0


def test_itl_and_e2e_count_every_generation(server: ThreadServer, client: httpx.Client) -> None:
    _wait_idle(server)
    itl = _value(server, "omega_server_inter_token_latency_seconds_count")
    e2e = _value(server, "omega_server_e2e_request_latency_seconds_count")
    e2e_sum = _value(server, "omega_server_e2e_request_latency_seconds_sum")
    started = time.monotonic()
    body = greedy(client, 6)
    took = time.monotonic() - started
    n = body["usage"]["completion_tokens"]
    assert n >= 2
    # one gap between each two consecutive tokens, one end-to-end time per finished generation
    assert _value(server, "omega_server_inter_token_latency_seconds_count") == itl + n - 1
    assert _value(server, "omega_server_e2e_request_latency_seconds_count") == e2e + 1
    assert 0 < _value(server, "omega_server_e2e_request_latency_seconds_sum") - e2e_sum <= took
    # streamed the same
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "tiny-vlm",
            "messages": [image_message()],
            "max_tokens": 5,
            "temperature": 0,
            "stream": True,
        },
    ) as r:
        assert r.status_code == 200
        r.read()
    assert _value(server, "omega_server_e2e_request_latency_seconds_count") == e2e + 2
    assert _value(server, "omega_server_inter_token_latency_seconds_count") >= itl + n - 1 + 1


def test_running_and_kv_usage_while_a_generation_runs(
    server: ThreadServer, long_body: dict[str, Any]
) -> None:
    _wait_idle(server)
    idle = _samples(server)
    for name in (
        "omega_server_requests_running",
        "omega_server_requests_waiting",
        "omega_server_kv_slots_usage_ratio",
        "omega_server_kv_token_usage_ratio",
    ):
        assert idle[(name, ())] == 0, name

    async def scenario() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with (
            httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c,
            c.stream("POST", "/v1/chat/completions", json={**long_body, "stream": True}) as r,
        ):
            assert r.status_code == 200
            lines = r.aiter_lines()
            for _ in range(20):  # a few tokens in: the prompt and some output are cached
                await anext(lines)
            return await asyncio.to_thread(_samples, server)

    busy = asyncio.run(scenario())
    assert busy[("omega_server_requests_running", ())] == 1
    assert busy[("omega_server_kv_slots_usage_ratio", ())] == pytest.approx(1 / MAX_BATCH)
    tokens = busy[("omega_server_kv_token_usage_ratio", ())] * MAX_BATCH * MAX_LEN
    assert 10 < tokens < MAX_LEN, tokens  # the prompt plus the tokens so far, of one request
    _wait_idle(server, 10)
    after = _samples(server)
    assert after[("omega_server_requests_running", ())] == 0
    assert after[("omega_server_kv_token_usage_ratio", ())] == 0


def test_refusals_counted_by_reason(
    server: ThreadServer, client: httpx.Client, long_body: dict[str, Any]
) -> None:
    _wait_idle(server)
    before = {
        reason: _value(server, "omega_server_requests_rejected_total", reason=reason)
        for reason in REJECTION_REASONS
    }
    assert ("omega_server_requests_rejected_total", (("reason", "queue_full"),)) in _samples(server)
    # 400: invalid
    r = client.post("/v1/chat/completions", json={"model": "tiny-vlm", "messages": [], "max_tokens": 2})
    assert r.status_code == 400
    r = client.post(
        "/v1/chat/completions", json={"model": "tiny-vlm", "messages": [image_message()], "max_tokens": -1}
    )
    assert r.status_code == 400
    # 401: no key
    assert httpx.post(f"{server.url}/v1/chat/completions", json={}).status_code == 401
    # 404 and 200 are no refusals
    assert client.get("/v1/nothing-here").status_code == 404
    assert greedy(client, 2)
    # 429: the queue is full
    results = asyncio.run(_flood(server.url, {**long_body, "stream": True}, 8, settle=6))
    full = [s for s, _ in results].count(429)
    assert full >= 4
    _wait_idle(server, 30)
    after = {
        reason: _value(server, "omega_server_requests_rejected_total", reason=reason)
        for reason in REJECTION_REASONS
    }
    assert after["invalid"] == before["invalid"] + 2
    assert after["unauthorized"] == before["unauthorized"] + 1
    assert after["queue_full"] == before["queue_full"] + full
    assert after["engine_dead"] == before["engine_dead"] and after["loading"] == before["loading"]


def test_refusals_of_a_dead_engine(request: pytest.FixtureRequest) -> None:
    """503 engine_dead once the engine stopped; 413 from the body limit."""
    from tests.omega_server.live import tiny

    own = ThreadServer({"MODEL_PATH": str(tiny(request)), **SHARED_ENV, "MAX_REQUEST_BYTES": "4096"}).start()
    try:
        with httpx.Client(base_url=own.url, headers=AUTH, timeout=60) as c:
            r = c.post(
                "/v1/chat/completions", content=b"x" * 5000, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 413
            own.engine.shutdown()
            r = c.post(
                "/v1/chat/completions",
                json={"model": "tiny-vlm", "messages": [image_message()], "max_tokens": 2},
            )
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
        assert _value(own, "omega_server_requests_rejected_total", reason="too_large") == 1
        assert _value(own, "omega_server_requests_rejected_total", reason="engine_dead") == 1
        assert _value(own, "omega_server_requests_rejected_total", reason="invalid") == 0
    finally:
        own.stop()
