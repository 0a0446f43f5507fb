"""The HTTP driver's client: ``concurrency`` streaming chat completions at once against a server.

Runs in its own process (``python -m bench.vlmbench.client SPEC_JSON``), so that its event loop and
SSE parsing do not share a GIL with the server it measures. Prints one JSON object: a list of request
timings (``bench.vlmbench.stats.RequestTiming`` fields). Works against any OpenAI-compatible server
(``--url``), e.g. ``python -m omega_server`` on a GPU.

Before the clock starts: the images are made and encoded, the bodies serialized, and the client is
warmed up by ``concurrency`` concurrent ``GET /v1/models`` (spec ``warm_up``, default on). The warm-up
opens the connections (kept alive, as an OpenAI SDK client keeps them) and runs the client's own
first-request work: httpx imports its async backend lazily on the first request, which took about
24 ms on a CPU test machine and would otherwise be counted in the server's TTFT.

Each request is timed from its POST: when its body was written (``sent``), its first SSE chunk
(``first_chunk``: the role chunk, sent when the engine emits the first token), and each content chunk
(``events``). The server's ``Server-Timing`` header is kept per request (``server_timing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from bench.vlmbench.stats import RequestTiming
from bench.vlmbench.workload import Workload, filler_text, image_data_url, noise_image, openai_body


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
        timing.error = "cancelled at the cell's time limit"
        raise
    except Exception as exc:
        timing.error = f"{type(exc).__name__}: {exc}"


async def warm_up(client: Any, base_url: str, headers: dict[str, str], n: int) -> None:
    """``n`` concurrent ``GET /v1/models``: opens up to ``n`` kept-alive connections and runs the
    client's first-request work; failures are ignored (the measured requests will report them)."""
    await asyncio.gather(
        *(client.get(base_url + "/v1/models", headers=headers) for _ in range(n)), return_exceptions=True
    )


async def run(spec: dict[str, Any]) -> list[RequestTiming]:
    """Run one cell as ``spec`` says: url, model, concurrency, text_chars, time_limit_s, workload fields,
    and ``warm_up`` (default true)."""
    import httpx

    workload = Workload(**spec["workload"])
    text = filler_text(int(spec["text_chars"]))
    n = int(spec["concurrency"])
    seed0 = int(spec.get("seed", 0))
    bodies = [
        json.dumps(
            openai_body(
                spec["model"], image_data_url(noise_image(workload.image_size, seed0 + i)), text, workload
            )
        ).encode()
        for i in range(n)
    ]
    headers = {"content-type": "application/json"}
    if spec.get("api_key"):
        headers["authorization"] = f"Bearer {spec['api_key']}"
    base_url = spec["url"].rstrip("/")
    url = base_url + "/v1/chat/completions"
    timings = [RequestTiming(submitted=0.0) for _ in range(n)]
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0), limits=limits) as client:
        if spec.get("warm_up", True):
            await warm_up(client, base_url, headers, n)
        tasks = [
            asyncio.create_task(_one(client, url, b, t, headers))
            for b, t in zip(bodies, timings, strict=True)
        ]
        _, pending = await asyncio.wait(tasks, timeout=float(spec["time_limit_s"]))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return timings


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.vlmbench.client SPEC_JSON`` -> JSON list of timings on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.vlmbench.client SPEC_JSON", file=sys.stderr)
        return 2
    timings = asyncio.run(run(json.loads(args[0])))
    print(json.dumps([asdict(t) for t in timings]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
