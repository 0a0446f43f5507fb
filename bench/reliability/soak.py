"""A soak under overload: open-loop arrivals at a multiple of the server's measured capacity, some clients
disconnecting mid-stream, the server's memory and answers watched throughout.

Expected (issue 17): only 200 and 429 (429 with Retry-After); resident memory growth under 5% from the
end of the warm-up to the end; the queue (and running) gauges at 0 once the load stops; the p99 latency
of admitted requests bounded (reported).
"""

from __future__ import annotations

import asyncio
import collections
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Gauges that must read 0 once the load has stopped (those of them the server exports).
IDLE_GAUGES = ("omega_server_queue_depth", "omega_server_requests_running", "omega_server_requests_waiting")


@dataclass
class SoakReport:
    """Answers by status, latencies of admitted requests, resident memory samples, gauges after."""

    offered_rps: float = 0.0
    capacity_rps: float = 0.0
    by_status: collections.Counter[str] = field(default_factory=collections.Counter)
    missing_retry_after: int = 0
    disconnected: int = 0
    latencies: list[float] = field(default_factory=list)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    gauges_after: dict[str, float] = field(default_factory=dict)
    warmup_s: float = 0.0
    seconds: float = 0.0

    def rss_growth(self) -> float:
        """Resident memory at the end over the first sample after the warm-up, minus 1."""
        after = [kib for t, kib in self.rss_kib if t >= self.warmup_s]
        if len(after) < 2:
            return 0.0
        return after[-1] / after[0] - 1.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def violations(self) -> list[str]:
        out = [f"{n} answers with status {s}" for s, n in self.by_status.items() if s not in ("200", "429")]
        if self.missing_retry_after:
            out.append(f"{self.missing_retry_after} x 429 without Retry-After")
        if self.rss_growth() >= 0.05:
            out.append(f"resident memory grew {self.rss_growth():.1%} after the warm-up")
        out += [f"{name} = {value} after the load" for name, value in self.gauges_after.items() if value != 0]
        if not self.by_status.get("200"):
            out.append("no request was served")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "offered_rps": round(self.offered_rps, 2),
            "capacity_rps": round(self.capacity_rps, 2),
            "by_status": dict(self.by_status),
            "missing_retry_after": self.missing_retry_after,
            "disconnected_mid_stream": self.disconnected,
            "admitted_latency_s": {
                "p50": round(self.percentile(0.5), 3),
                "p99": round(self.percentile(0.99), 3),
                "max": round(max(self.latencies, default=0.0), 3),
            },
            "rss_kib_first_after_warmup_and_last": [
                next((k for t, k in self.rss_kib if t >= self.warmup_s), 0),
                self.rss_kib[-1][1] if self.rss_kib else 0,
            ],
            "rss_growth": round(self.rss_growth(), 4),
            "gauges_after": self.gauges_after,
            "seconds": round(self.seconds, 1),
            "violations": self.violations(),
        }


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_gauges(text: str) -> dict[str, float]:
    """The IDLE_GAUGES present in a /metrics text, summed over their label sets."""
    out: dict[str, float] = {}
    for name in IDLE_GAUGES:
        values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
        if values:
            out[name] = sum(values)
    return out


def chat_body(max_tokens: int) -> dict[str, Any]:
    return {
        "model": "tiny-vlm",
        "messages": [{"role": "user", "content": "Tell me a story about a lighthouse."}],
        "max_tokens": max_tokens,
        "stream": True,
    }


async def one_request(
    client: httpx.AsyncClient, report: SoakReport, max_tokens: int, disconnect: bool
) -> tuple[str, float]:
    """One streamed request; ``disconnect`` closes the connection after the first chunk."""
    start = time.monotonic()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(max_tokens)) as r:
            status = str(r.status_code)
            if r.status_code == 429 and "retry-after" not in r.headers:
                report.missing_retry_after += 1
            if r.status_code == 200:
                async for _chunk in r.aiter_bytes():
                    if disconnect:
                        report.disconnected += 1
                        return "disconnected", time.monotonic() - start
            else:
                await r.aread()
    except httpx.HTTPError as exc:
        status = f"client_error:{type(exc).__name__}"
    return status, time.monotonic() - start


async def measure_capacity(
    base_url: str, headers: dict[str, str], clients: int, seconds: float, max_tokens: int
) -> float:
    """Completed requests per second with ``clients`` closed-loop clients (the server's capacity)."""
    done = 0
    stop = time.monotonic() + seconds
    report = SoakReport()
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as client:

        async def loop() -> None:
            nonlocal done
            while time.monotonic() < stop:
                status, _ = await one_request(client, report, max_tokens, False)
                done += status == "200"

        start = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(clients)))
    return done / (time.monotonic() - start)


async def soak(
    base_url: str,
    pid: int,
    *,
    api_key: str | None,
    seconds: float,
    warmup_s: float,
    overload: float = 2.0,
    disconnect_share: float = 0.1,
    capacity_clients: int = 8,
    max_tokens: int = 16,
    seed: int = 0,
) -> SoakReport:
    """Measure capacity, then offer ``overload`` x capacity as Poisson arrivals for ``seconds``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    report = SoakReport(warmup_s=warmup_s)
    report.capacity_rps = await measure_capacity(
        base_url, headers, capacity_clients, min(20.0, seconds / 3), max_tokens
    )
    report.offered_rps = overload * report.capacity_rps
    rng = random.Random(seed)
    begin = time.monotonic()
    tasks: set[asyncio.Task[tuple[str, float]]] = set()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120, limits=limits) as client:

        def finished(task: asyncio.Task[tuple[str, float]]) -> None:
            tasks.discard(task)
            status, latency = task.result()
            report.by_status[status] += 1
            if status == "200":
                report.latencies.append(latency)

        next_sample = 0.0
        while (now := time.monotonic() - begin) < seconds:
            if now >= next_sample:
                report.rss_kib.append((now, rss_kib(pid)))
                next_sample = now + 2.0
            task = asyncio.create_task(
                one_request(client, report, max_tokens, rng.random() < disconnect_share)
            )
            task.add_done_callback(finished)
            tasks.add(task)
            await asyncio.sleep(rng.expovariate(report.offered_rps))
        if tasks:
            await asyncio.wait(set(tasks))
        report.rss_kib.append((time.monotonic() - begin, rss_kib(pid)))
        await asyncio.sleep(1.0)
        report.gauges_after = read_gauges((await client.get("/metrics")).text)
    report.by_status.pop("disconnected", None)
    report.seconds = time.monotonic() - begin
    return report
