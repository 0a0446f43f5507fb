"""The HTTP driver's client: ``concurrency`` streaming chat completions at once against a server.

Runs in its own process (``python -m bench.vlmbench.client SPEC_JSON``), so that its event loop and
SSE parsing do not share a GIL with the server it measures. Prints one JSON object: a list of request
timings (``bench.vlmbench.stats.RequestTiming`` fields). Images are made and encoded before the
clock starts; each request is timed from its POST to each content chunk of the stream.
Works against any OpenAI-compatible server (``--url``), e.g. ``python -m omega_server`` on a GPU.
"""

from __future__ import annotations

import asyncio
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
    try:
        timing.submitted = time.perf_counter()
        async with client.stream("POST", url, content=body, headers=headers) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                timing.error = f"HTTP {response.status_code}: {text[:500]}"
                return
            async for line in response.aiter_lines():
                chunk = parse_sse_line(line)
                if chunk is not None:
                    apply_chunk(timing, chunk, time.perf_counter())
    except asyncio.CancelledError:
        timing.error = "cancelled at the cell's time limit"
        raise
    except Exception as exc:
        timing.error = f"{type(exc).__name__}: {exc}"


async def run(spec: dict[str, Any]) -> list[RequestTiming]:
    """Run one cell as ``spec`` says: url, model, concurrency, text_chars, time_limit_s, workload fields."""
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
    url = spec["url"].rstrip("/") + "/v1/chat/completions"
    timings = [RequestTiming(submitted=0.0) for _ in range(n)]
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0), limits=limits) as client:
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
