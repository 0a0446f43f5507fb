"""The HTTP API over real HTTP against a real server (tiny Qwen2-VL checkpoint, real engine)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.omega_server.live import AUTH, SHARED_ENV, ThreadServer, image_message, sse_events

MAX_MODEL_LENGTH = int(SHARED_ENV["MAX_MODEL_LENGTH"])


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", "tiny-vlm")
    body.setdefault("messages", [image_message()])
    return client.post("/v1/chat/completions", json=body)


def stream_chat(client: httpx.Client, **body: Any) -> list[Any]:
    body.setdefault("model", "tiny-vlm")
    body.setdefault("messages", [image_message()])
    body["stream"] = True
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r.iter_lines())


def greedy(client: httpx.Client, max_tokens: int, text: str = "Describe the image.") -> dict[str, Any]:
    r = chat(client, messages=[image_message(text)], max_tokens=max_tokens, temperature=0)
    assert r.status_code == 200, r.text
    return dict(r.json())


# --------------------------------------------------------------------------- probes


def test_health_reports_the_loaded_engine(client: httpx.Client) -> None:
    r = client.get("/health", headers={})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready" and body["ready"] is True
    assert body["attn"] == "sdpa" and body["attn_requested"] == "sdpa"
    assert set(body["flash_attn"]) == {"available", "loaded", "version", "error", "error_kind"}
    assert body["model"] == "tiny-vlm"
    assert body["dtype"].startswith("torch.")
    assert body["devices"] == ["cpu"] and len(body["device_names"]) == 1
    assert body["batch"] == {"max_batch_size": 2}
    assert body["max_model_length"] == MAX_MODEL_LENGTH
    # the tiny server is a dense model on the CPU: dynamic cache, packed one-token attention, no experts
    assert body["decode"] == {
        "kv_cache": "dynamic",
        "cuda_graphs": False,
        "compiled": False,
        "gqa_decode": True,
        "experts": None,
        "flash_kernels": None,
    }
    assert body["version"] == "0.1.0"


def test_live_and_models(client: httpx.Client) -> None:
    assert client.get("/live", headers={}).json() == {"status": "alive"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny-vlm"]


# --------------------------------------------------------------------------- completions


def test_chat_with_image_answers_with_usage(client: httpx.Client) -> None:
    body = greedy(client, max_tokens=8)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-vlm"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    # The prompt includes the image's placeholder tokens, so it is longer than the text alone.
    assert usage["prompt_tokens"] > len("Describe the image.")
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_bounds_output(client: httpx.Client) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        body = chat(client, temperature=0, **{field: 3}).json()
        assert body["usage"]["completion_tokens"] <= 3
        if body["usage"]["completion_tokens"] == 3:
            assert body["choices"][0]["finish_reason"] == "length"


def test_default_max_tokens_fits_the_room_left(client: httpx.Client) -> None:
    default = int(SHARED_ENV["DEFAULT_MAX_TOKENS"])
    body = chat(client, messages=[{"role": "user", "content": "hi"}], temperature=0).json()
    assert 1 <= body["usage"]["completion_tokens"] <= default
    # A prompt that leaves fewer than DEFAULT_MAX_TOKENS tokens: the answer gets the room there is.
    overhead = (
        chat(client, messages=[{"role": "user", "content": "a"}], max_tokens=1).json()["usage"][
            "prompt_tokens"
        ]
        - 1
    )
    text = "a" * (MAX_MODEL_LENGTH - overhead - 3)
    body = chat(client, messages=[{"role": "user", "content": text}], temperature=0).json()
    room = MAX_MODEL_LENGTH - body["usage"]["prompt_tokens"]
    assert 1 <= room < default, body["usage"]
    assert 1 <= body["usage"]["completion_tokens"] <= room


def test_greedy_is_deterministic_and_seed_reproduces_sampling(client: httpx.Client) -> None:
    assert greedy(client, 10)["choices"] == greedy(client, 10)["choices"]
    a = chat(client, max_tokens=10, temperature=1.0, seed=1234).json()["choices"][0]["message"]["content"]
    b = chat(client, max_tokens=10, temperature=1.0, seed=1234).json()["choices"][0]["message"]["content"]
    assert a == b


def test_tiny_temperature_means_greedy(client: httpx.Client) -> None:
    expected = greedy(client, 6)["choices"]
    assert chat(client, max_tokens=6, temperature=1e-30).json()["choices"] == expected


def test_json_body_without_json_content_type(client: httpx.Client) -> None:
    """`curl -d '{...}'` sends form encoding; the body is JSON all the same."""
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    r = client.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 200, r.text


def test_text_only_and_system_messages(client: httpx.Client) -> None:
    r = chat(
        client,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
        ],
        max_tokens=4,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_streaming_matches_non_streaming(client: httpx.Client) -> None:
    expected = greedy(client, 12)
    events = stream_chat(client, max_tokens=12, temperature=0)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == expected["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == [expected["choices"][0]["finish_reason"]]
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage


def test_streaming_usage_in_last_chunk(client: httpx.Client) -> None:
    events = stream_chat(client, max_tokens=5, temperature=0, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"] == []
    usage = last["usage"]
    assert 1 <= usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(e["usage"] is None for e in events[:-2])


def test_stop_strings_cut_the_output(client: httpx.Client) -> None:
    full = greedy(client, 24)["choices"][0]["message"]["content"]
    # Pick a stop string from the middle of what the model says anyway.
    start = next(
        (i for i in range(2, len(full) - 2) if full[i : i + 2].isprintable() and full[i : i + 2].strip()),
        None,
    )
    assert start is not None, f"tiny model output too short to test stop strings: {full!r}"
    stop = full[start : start + 2]
    cut = full[: full.index(stop)]
    body = chat(client, max_tokens=24, temperature=0, stop=[stop, "never-appears"]).json()
    assert body["choices"][0]["message"]["content"] == cut
    assert body["choices"][0]["finish_reason"] == "stop"
    events = stream_chat(client, max_tokens=24, temperature=0, stop=stop)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == cut


def test_prompt_too_long_names_both_numbers(client: httpx.Client) -> None:
    r = chat(client, messages=[{"role": "user", "content": "word " * 300}], max_tokens=MAX_MODEL_LENGTH - 100)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert str(MAX_MODEL_LENGTH) in err["message"] and str(MAX_MODEL_LENGTH - 100) in err["message"]
    assert client.get("/health").status_code == 200


# --------------------------------------------------------------------------- auth


def test_auth_required_on_api_only(server: ThreadServer) -> None:
    url = server.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [image_message()]}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 401
    for path in ("/health", "/live", "/metrics"):
        assert httpx.get(f"{url}{path}").status_code == 200


# --------------------------------------------------------------------------- engine behaviour


async def _stream_first_chunk(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str]]:
    async with (
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as c,
        c.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        if r.status_code == 200:
            async for _ in r.aiter_lines():
                break
        return r.status_code, dict(r.headers)


LONG_TOKENS = 900


@pytest.fixture(scope="module")
def long_body(client: httpx.Client) -> dict[str, Any]:
    """A request whose greedy answer runs the full LONG_TOKENS (the tiny model's EOS never comes).

    Sampling at temperature 1 would hit the tiny model's EOS after a few hundred tokens at random,
    so the tests that need a long generation (queue, disconnects) use this greedy one.
    """
    body = {"messages": [image_message()], "max_tokens": LONG_TOKENS, "temperature": 0}
    r = chat(client, **body)
    assert r.json()["usage"]["completion_tokens"] == LONG_TOKENS, "tiny model's greedy answer ends early"
    return body


def _wait_idle(server: ThreadServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = server.engine.stats
        if stats.running == 0 and stats.queue_depth == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"engine still busy: {server.engine.stats}")


def test_concurrent_requests_share_forward_passes(server: ThreadServer) -> None:
    _wait_idle(server)
    batched_before = server.engine.stats.requests_batched_total

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c:
            body = {"messages": [image_message()], "max_tokens": 8, "temperature": 0}
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(2)))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 200]
    after = server.engine.stats
    assert after.max_batch_seen >= 2
    assert after.requests_batched_total >= batched_before + 2


def test_queue_full_gives_429_with_retry_after(
    server: ThreadServer, client: httpx.Client, long_body: dict[str, Any]
) -> None:
    _wait_idle(server)
    body = {**long_body, "stream": True}
    # At most MAX_BATCH_SIZE=2 run and MAX_QUEUE=2 wait; at least 4 of 8 must be refused at once
    # (more when the worker has not yet moved a waiting request into the batch).
    results = asyncio.run(_flood(server.url, body, 8, settle=6))
    statuses = [s for s, _ in results]
    assert set(statuses) == {200, 429} and statuses.count(429) >= 4, statuses
    for status, headers in results:
        if status == 429:
            assert int(headers["retry-after"]) >= 1
    _wait_idle(server, 30)
    assert client.get("/health").status_code == 200
    assert chat(client, max_tokens=2).status_code == 200


async def _flood(url: str, body: dict[str, Any], n: int, settle: int) -> list[tuple[int, dict[str, str]]]:
    """n concurrent streams, held open until `settle` of them have a status; then everyone hangs up
    (queued streams get no status before their first token, so they are among the ones left)."""
    answered: list[tuple[int, dict[str, str]]] = []
    enough = asyncio.Event()

    async def one(c: httpx.AsyncClient) -> None:
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            answered.append((r.status_code, dict(r.headers)))
            if len(answered) >= settle:
                enough.set()
            await enough.wait()

    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as c:
        tasks = [asyncio.create_task(one(c)) for _ in range(n)]
        await asyncio.wait_for(enough.wait(), 60)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return answered


def test_client_disconnect_cancels_streaming_generation(
    server: ThreadServer, long_body: dict[str, Any]
) -> None:
    _wait_idle(server)
    cancelled = _metric(server, "omega_server_requests_cancelled_total")
    body = {**long_body, "stream": True}
    started = time.monotonic()
    status, _ = asyncio.run(_stream_first_chunk(server.url, body))  # reads one chunk, then hangs up
    assert status == 200
    _wait_idle(server, 10)
    assert _metric(server, "omega_server_requests_cancelled_total") == cancelled + 1
    # LONG_TOKENS tokens take far longer than the hang-up took to be noticed.
    assert server.engine.stats.running == 0 and time.monotonic() - started < 10


def test_client_disconnect_cancels_non_streaming_generation(
    server: ThreadServer, long_body: dict[str, Any]
) -> None:
    _wait_idle(server)
    cancelled = _metric(server, "omega_server_requests_cancelled_total")
    payload = json.dumps(long_body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {AUTH['Authorization'].split()[1]}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        deadline = time.monotonic() + 10
        while server.engine.stats.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.engine.stats.running == 1
    _wait_idle(server, 10)
    assert _metric(server, "omega_server_requests_cancelled_total") == cancelled + 1


def test_client_disconnect_while_queued_cancels(server: ThreadServer, long_body: dict[str, Any]) -> None:
    """A client that gives up while its request waits for a batch slot never gets generated for."""
    _wait_idle(server)
    cancelled = _metric(server, "omega_server_requests_cancelled_total")
    prefills_before = server.engine.stats.prefill_passes

    async def scenario() -> None:
        long = {**long_body, "stream": True}
        # Two streams fill the batch (MAX_BATCH_SIZE=2) and keep it full.
        async with (
            httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c,
            c.stream("POST", "/v1/chat/completions", json=long) as a,
            c.stream("POST", "/v1/chat/completions", json=long) as b,
        ):
            assert (a.status_code, b.status_code) == (200, 200)
            queued = asyncio.create_task(c.post("/v1/chat/completions", json={**long, "stream": False}))
            for _ in range(200):
                if server.engine.stats.queue_depth == 1:
                    break
                await asyncio.sleep(0.01)
            assert server.engine.stats.queue_depth == 1
            queued.cancel()  # the client hangs up while queued
            with contextlib.suppress(asyncio.CancelledError):
                await queued
            for _ in range(200):
                if _metric(server, "omega_server_requests_cancelled_total") == cancelled + 1:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(scenario())
    _wait_idle(server)
    # The two streams (cancelled when closed) and the queued request: 3 cancellations; the queued one
    # was never prefilled (only the two streams were).
    assert _metric(server, "omega_server_requests_cancelled_total") == cancelled + 3
    assert server.engine.stats.prefill_passes == prefills_before + 2


# --------------------------------------------------------------------------- metrics


def _metric(server: ThreadServer, name: str, labels: str = "") -> float:
    text = httpx.get(f"{server.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.split()[-1])
    return 0.0


def test_metrics_exist_and_count(server: ThreadServer, client: httpx.Client) -> None:
    before = _metric(server, "omega_server_requests_total", '{status="200"}')
    out_before = _metric(server, "omega_server_output_tokens_total")
    body = greedy(client, 4)
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in (
        "omega_server_requests_total",
        "omega_server_request_duration_seconds",
        "omega_server_time_to_first_token_seconds",
        "omega_server_output_tokens_total",
        "omega_server_prompt_tokens_total",
        "omega_server_queue_depth",
        "omega_server_batch_size",
        "omega_server_attention_info",
        "omega_server_flash_attn_load_failures_total",
        "omega_server_gpu_memory_allocated_bytes",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in r.text, name
    assert _metric(server, "omega_server_requests_total", '{status="200"}') == before + 1
    assert (
        _metric(server, "omega_server_output_tokens_total") == out_before + body["usage"]["completion_tokens"]
    )
    assert _metric(server, "omega_server_attention_info", '{backend="sdpa",requested="sdpa"}') == 1
    assert _metric(server, "omega_server_batch_size_count") > 0
    assert _metric(server, "omega_server_time_to_first_token_seconds_count") > 0
