"""The HTTP driver's client: one cell of streaming chat completions against a server, sent the way
its workload (``bench.vlmbench.scenarios.Scenario``) says: one wave, a closed loop, or a burst.

Runs in its own process (``python -m bench.vlmbench.client SPEC_JSON``), so that its event loop and
SSE parsing do not share a GIL with the server it measures. Prints one JSON object: ``timings`` (a list
of ``bench.vlmbench.stats.RequestTiming`` fields) and ``meta`` (e.g. when a burst was sent). Works
against any OpenAI-compatible server (``url``), e.g. ``python -m omega_server`` on a GPU.

Before the clock starts: the images are made and encoded, the bodies serialized, and the client is
warmed up by as many concurrent ``GET /v1/models`` as requests will be in flight (spec ``warm_up``, default on). The warm-up
opens the connections (kept alive, as an OpenAI SDK client keeps them) and runs the client's own
first-request work: httpx imports its async backend lazily on the first request, which took about
24 ms on a CPU test machine and would otherwise be counted in the server's TTFT.

Each request is timed from its POST: when its body was written (``sent``), its first SSE chunk
(``first_chunk``: the role chunk, sent when the engine emits the first token), and each content chunk
(``events``). The server's ``Server-Timing`` header is kept per request (``server_timing``). A refused
request (any HTTP status but 200) is recorded as ``error: "HTTP <status>: <body>"``, not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from bench.vlmbench.scenarios import Scenario, build_bodies
from bench.vlmbench.stats import RequestTiming

CANCELLED = "cancelled at the cell's time limit"
STOPPED_AFTER_BURST = "stopped after the burst"


def parse_sse_line(line: str) -> dict[str, Any] | None:
    """The JSON payload of one SSE ``data:`` line; None for other lines and ``[DONE]``."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if not data or data == "[DONE]":
        return None
    parsed = json.loads(data)
    return parsed if isinstance(parsed, dict) else None


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing: body;dur=1.2, parse;dur=0.8`` -> ``{"body": 1.2, "parse": 0.8}`` (ms)."""
    stages: dict[str, float] = {}
    for metric in (header or "").split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip().lower() == "dur":
                with contextlib.suppress(ValueError):
                    stages[name] = float(value.strip().strip('"'))
    return stages


def apply_chunk(timing: RequestTiming, chunk: dict[str, Any], arrived: float) -> None:
    """Record one chat.completion.chunk: content deltas are token arrivals; usage ends the count."""
    if "error" in chunk:
        timing.error = json.dumps(chunk["error"])[:500]
        return
    for choice in chunk.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content:
            timing.events.append((arrived, 1))
            if timing.text is not None:
                timing.text += content
        if choice.get("finish_reason"):
            timing.finish_reason = choice["finish_reason"]
    usage = chunk.get("usage")
    if usage:
        timing.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        timing.completion_tokens = int(usage.get("completion_tokens") or 0)


async def _one(client: Any, url: str, body: bytes, timing: RequestTiming, headers: dict[str, str]) -> None:
    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "http11.send_request_body.complete":
            timing.sent = time.perf_counter()

    try:
        timing.submitted = time.perf_counter()
        async with client.stream(
            "POST", url, content=body, headers=headers, extensions={"trace": trace}
        ) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                timing.error = f"HTTP {response.status_code}: {text[:500]}"
                return
            timing.server_timing = parse_server_timing(response.headers.get("server-timing"))
            async for line in response.aiter_lines():
                chunk = parse_sse_line(line)
                if chunk is not None:
                    arrived = time.perf_counter()
                    if timing.first_chunk is None:
                        timing.first_chunk = arrived
                    apply_chunk(timing, chunk, arrived)
    except asyncio.CancelledError:
        timing.error = CANCELLED
        raise
    except Exception as exc:
        timing.error = f"{type(exc).__name__}: {exc}"


async def warm_up(
    client: Any, base_url: str, headers: dict[str, str], n: int, path: str = "/v1/models"
) -> None:
    """``n`` concurrent ``GET path``: opens up to ``n`` kept-alive connections and runs the client's
    first-request work; failures are ignored (the measured requests will report them). The path must
    answer without closing the connection (transformers serve's ``/v1/models`` fails and closes it:
    its peer cells warm up on ``/health``)."""
    await asyncio.gather(
        *(client.get(base_url + path, headers=headers) for _ in range(n)), return_exceptions=True
    )


async def _finish(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait for ``tasks`` up to ``timeout`` seconds, then cancel the rest and let them record it."""
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _closed(send: Any, n: int, in_flight: int, deadline: float) -> None:
    """Send request 0..n-1 with at most ``in_flight`` outstanding (a new one as soon as one ends)."""
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            if time.perf_counter() < deadline:
                await send(i)

    await _finish([asyncio.create_task(one(i)) for i in range(n)], deadline - time.perf_counter())


async def _burst(
    send: Any, timings: list[RequestTiming], running: int, after_tokens: int, deadline: float
) -> dict[str, Any]:
    """Start the ``running`` streams; once each has ``after_tokens`` tokens (or ended), send the rest at
    once; when those are done, stop the running streams (their later tokens are not measured)."""
    first = [asyncio.create_task(send(i)) for i in range(running)]
    while time.perf_counter() < deadline:
        ready = all(
            len(timings[i].events) >= after_tokens or timings[i].error or first[i].done()
            for i in range(running)
        )
        if ready:
            break
        await asyncio.sleep(0.002)
    burst_at = time.perf_counter()
    rest = [asyncio.create_task(send(i)) for i in range(running, len(timings))]
    await _finish(rest, deadline - time.perf_counter())
    ended = [i for i in range(running) if not first[i].done()]
    await _finish(first, 0.0)
    for i in ended:
        if timings[i].error == CANCELLED:
            timings[i].error = None
            timings[i].finish_reason = STOPPED_AFTER_BURST
    return {"burst_at": burst_at}


def spec_scenario(spec: dict[str, Any]) -> Scenario:
    """The spec's scenario; a spec in the older form (``text_chars`` + ``workload`` fields) is the
    standard workload: one image of ``image_size`` and that text."""
    if "scenario" in spec:
        return Scenario.from_dict(spec["scenario"])
    wl = spec["workload"]
    return Scenario(
        "standard",
        image_size=int(wl["image_size"]),
        text_chars=int(spec["text_chars"]),
        output_tokens=int(wl["output_tokens"]),
        temperature=float(wl.get("temperature", 0.0)),
    )


async def run(spec: dict[str, Any]) -> list[RequestTiming]:
    """``run_cell`` without its meta: the request timings."""
    timings, _ = await run_cell(spec)
    return timings


async def run_cell(spec: dict[str, Any]) -> tuple[list[RequestTiming], dict[str, Any]]:
    """Run one cell as ``spec`` says: url, model, scenario (``Scenario.to_dict``), concurrency,
    time_limit_s, seed, and optionally max_tokens (all requests), api_key, warm_up (default true),
    warm_up_path (default ``/v1/models``) and keep_text (keep each answer's content). Returns the timings
    and ``meta`` (e.g. ``burst_at``)."""
    import httpx

    scenario = spec_scenario(spec)
    n_flight = int(spec["concurrency"])
    bodies = build_bodies(scenario, spec["model"], n_flight, int(spec.get("seed", 0)), spec.get("max_tokens"))
    headers = {"content-type": "application/json"}
    if spec.get("api_key"):
        headers["authorization"] = f"Bearer {spec['api_key']}"
    base_url = spec["url"].rstrip("/")
    url = base_url + "/v1/chat/completions"
    keep = bool(spec.get("keep_text"))
    timings = [RequestTiming(submitted=0.0, group=g, text="" if keep else None) for g, _ in bodies]
    in_flight = len(bodies) if scenario.schedule != "closed" else min(n_flight, len(bodies))
    limits = httpx.Limits(max_connections=in_flight + 4, max_keepalive_connections=in_flight + 4)
    meta: dict[str, Any] = {"requests": len(bodies), "schedule": scenario.schedule}
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0), limits=limits) as client:
        if spec.get("warm_up", True):
            await warm_up(client, base_url, headers, in_flight, str(spec.get("warm_up_path") or "/v1/models"))

        async def send(i: int) -> None:
            await _one(client, url, bodies[i][1], timings[i], headers)

        deadline = time.perf_counter() + float(spec["time_limit_s"])
        if scenario.schedule == "closed":
            await _closed(send, len(bodies), in_flight, deadline)
            sent = [t for t in timings if t.submitted > 0]
            meta["not_sent"] = len(timings) - len(sent)  # the time limit came first
            timings = sent
        elif scenario.schedule == "burst":
            meta.update(await _burst(send, timings, n_flight, scenario.burst_after_tokens, deadline))
        else:
            await _finish(
                [asyncio.create_task(send(i)) for i in range(len(bodies))], float(spec["time_limit_s"])
            )
    return timings, meta


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.vlmbench.client SPEC_JSON`` -> ``{"timings": [...], "meta": {...}}`` on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.vlmbench.client SPEC_JSON", file=sys.stderr)
        return 2
    timings, meta = asyncio.run(run_cell(json.loads(args[0])))
    print(json.dumps({"timings": [asdict(t) for t in timings], "meta": meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
