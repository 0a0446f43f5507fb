"""Per-request timings -> the metrics of one benchmark cell (pure functions, no torch).

A request is timed from the moment the driver submits it (before the chat template and the image
processor run, as in the server) to each token's arrival. Definitions:

- TTFT: first token arrival - submit. Over HTTP the first token is the first *content* chunk: a token
  that ends inside a UTF-8 character has no text yet and sends none (the engine holds it back).
- TTFT to the first chunk (``ttft_first_chunk_*``): over HTTP, the first SSE chunk of any kind. The
  server sends its headers and role chunk when the engine emits the first token, text or not, which
  is what the engine driver's TTFT counts (its first output); for the engine driver the two are equal.
- send (``send_p50_ms``): client time from submit until the request body was handed to the socket.
- server timing (``server_timing_p50_ms``): the server's own durations of the stages before the first
  token (its ``Server-Timing`` header: body, parse, images, prepare, first-token), p50 per stage.
- ITL: gap between consecutive token arrivals of one request (a delta that carries k tokens counts as
  k gaps of gap/k). Percentiles are over all gaps of all requests in the cell.
- aggregate output tokens/s: all output tokens / (last arrival - first submit) over the cell.
- per-request tokens/s: a request's output tokens / its end-to-end latency; mean over requests.
- decode tokens/s: (tokens - 1) / (last arrival - first arrival) of one request; median over requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    None for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    frac = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * frac)


@dataclass
class RequestTiming:
    """One request as a driver saw it. Times are seconds on one monotonic clock.

    ``events`` are ``(arrival_time, tokens_in_this_delta)``; ``completion_tokens`` is the count the
    server reported (usage) when known, else the sum of the events. HTTP only: ``first_chunk`` is the
    arrival of the first SSE chunk (the role chunk), ``sent`` when the body was written, and
    ``server_timing`` the server's ``Server-Timing`` stages in ms. ``group`` names the request's part of
    a workload (``running``/``burst``, ``first``/``repeat``); ``text`` is the content, kept when asked.
    """

    submitted: float
    events: list[tuple[float, int]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    first_chunk: float | None = None
    sent: float | None = None
    server_timing: dict[str, float] = field(default_factory=dict)
    group: str = ""
    text: str | None = None

    @property
    def tokens(self) -> int:
        """Output tokens received."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return sum(n for _, n in self.events)

    @property
    def first(self) -> float | None:
        """Arrival time of the first token."""
        return self.events[0][0] if self.events else None

    @property
    def last(self) -> float | None:
        """Arrival time of the last token."""
        return self.events[-1][0] if self.events else None

    def ttft(self) -> float | None:
        """Seconds from submit to the first token."""
        return None if self.first is None else self.first - self.submitted

    def ttft_first_chunk(self) -> float | None:
        """Seconds from submit to the first chunk (the first token, with or without text)."""
        first = self.first_chunk if self.first_chunk is not None else self.first
        return None if first is None else first - self.submitted

    def send_time(self) -> float | None:
        """Seconds from submit until the request was written (HTTP)."""
        return None if self.sent is None else self.sent - self.submitted

    def itls(self) -> list[float]:
        """Inter-token gaps in seconds (a k-token delta yields k equal gaps)."""
        gaps: list[float] = []
        for (t0, _), (t1, n) in zip(self.events, self.events[1:], strict=False):
            n = max(n, 1)
            gaps.extend([(t1 - t0) / n] * n)
        return gaps

    def timed_gaps(self) -> list[tuple[float, float]]:
        """``(arrival, gap)`` of every inter-token gap, by the arrival that ends it."""
        out: list[tuple[float, float]] = []
        for (t0, _), (t1, n) in zip(self.events, self.events[1:], strict=False):
            n = max(n, 1)
            out.extend([(t1, (t1 - t0) / n)] * n)
        return out

    def decode_rate(self) -> float | None:
        """Tokens/s after the first token: (tokens - 1) / (last - first)."""
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.tokens - 1) / (self.last - self.first)

    def e2e_rate(self) -> float | None:
        """Output tokens / end-to-end latency."""
        if self.last is None or self.last <= self.submitted:
            return None
        return self.tokens / (self.last - self.submitted)


@dataclass(frozen=True)
class CellMetrics:
    """What one cell (model, backend, driver, concurrency) measured."""

    requests: int
    completed: int  # requests that produced all their tokens without error
    errors: int
    output_tokens: int
    seconds: float
    output_tokens_per_s: float | None
    per_request_output_tokens_per_s: float | None
    decode_tokens_per_s_p50: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    itl_p95_ms: float | None
    itl_mean_ms: float | None
    first_error: str | None = None
    ttft_first_chunk_p50_ms: float | None = None
    ttft_first_chunk_p95_ms: float | None = None
    send_p50_ms: float | None = None
    server_timing_p50_ms: dict[str, float] | None = None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 2)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def summarize(timings: Sequence[RequestTiming], expected_tokens: int) -> CellMetrics:
    """Aggregate one cell's request timings. ``expected_tokens`` is max_tokens (EOS ignored)."""
    started = [t.submitted for t in timings]
    ended = [t.last for t in timings if t.last is not None]
    total = sum(t.tokens for t in timings)
    seconds = (max(ended) - min(started)) if ended and started else 0.0
    ttfts = [v for t in timings if (v := t.ttft()) is not None]
    gaps = [g for t in timings for g in t.itls()]
    per_request = [v for t in timings if (v := t.e2e_rate()) is not None]
    decode = [v for t in timings if (v := t.decode_rate()) is not None]
    first_chunks = [v for t in timings if (v := t.ttft_first_chunk()) is not None]
    sends = [v for t in timings if (v := t.send_time()) is not None]
    errors = [t.error for t in timings if t.error]
    completed = sum(1 for t in timings if not t.error and t.tokens >= expected_tokens)
    return CellMetrics(
        requests=len(timings),
        completed=completed,
        errors=len(errors),
        output_tokens=total,
        seconds=round(seconds, 3),
        output_tokens_per_s=_round(total / seconds) if seconds > 0 else None,
        per_request_output_tokens_per_s=_round(sum(per_request) / len(per_request)) if per_request else None,
        decode_tokens_per_s_p50=_round(percentile(decode, 50)),
        ttft_p50_ms=_ms(percentile(ttfts, 50)),
        ttft_p95_ms=_ms(percentile(ttfts, 95)),
        itl_p50_ms=_ms(percentile(gaps, 50)),
        itl_p95_ms=_ms(percentile(gaps, 95)),
        itl_mean_ms=_ms(sum(gaps) / len(gaps)) if gaps else None,
        first_error=errors[0] if errors else None,
        ttft_first_chunk_p50_ms=_ms(percentile(first_chunks, 50)),
        ttft_first_chunk_p95_ms=_ms(percentile(first_chunks, 95)),
        send_p50_ms=_ms(percentile(sends, 50)),
        server_timing_p50_ms=server_timing_p50(timings),
    )


def server_timing_p50(timings: Sequence[RequestTiming]) -> dict[str, float] | None:
    """The p50 of each Server-Timing stage over the requests that reported it (ms); None if none did."""
    stages: dict[str, list[float]] = {}
    for t in timings:
        for name, ms in t.server_timing.items():
            stages.setdefault(name, []).append(ms)
    if not stages:
        return None
    return {name: round(percentile(values, 50) or 0.0, 2) for name, values in stages.items()}


def burst_metrics(timings: Sequence[RequestTiming], burst_at: float | None) -> dict[str, float | int | None]:
    """What a burst of arrivals does to the streams already running.

    ``burst_at`` is when the ``burst`` requests were sent. The window before it starts once every
    ``running`` stream has its first token; the burst window ends when every burst request has its first
    token (all their prefills are done). A gap counts in the window its ending token arrives in, so the
    gap that spans a stall counts in the burst window.
    """
    running = [t for t in timings if t.group == "running"]
    burst = [t for t in timings if t.group == "burst"]
    firsts = [t.first for t in burst if t.first is not None]
    ready = max((t.first for t in running if t.first is not None), default=None)
    end = max(firsts) if firsts and len(firsts) == len(burst) else None
    before: list[float] = []
    during: list[float] = []
    if burst_at is not None and ready is not None:
        for t in running:
            for arrival, gap in t.timed_gaps():
                if ready < arrival <= burst_at:
                    before.append(gap)
                elif arrival > burst_at and (end is None or arrival <= end):
                    during.append(gap)
    p95_before = percentile(before, 95)
    p95_during = percentile(during, 95)
    burst_ttfts = [v for t in burst if (v := t.ttft()) is not None]
    return {
        "running_streams": len(running),
        "burst_requests": len(burst),
        "burst_first_tokens": len(firsts),
        "burst_window_ms": _ms(end - burst_at) if end is not None and burst_at is not None else None,
        "itl_gaps_before": len(before),
        "itl_gaps_during": len(during),
        "itl_p50_before_ms": _ms(percentile(before, 50)),
        "itl_p95_before_ms": _ms(p95_before),
        "itl_p50_during_ms": _ms(percentile(during, 50)),
        "itl_p95_during_ms": _ms(p95_during),
        "itl_max_during_ms": _ms(max(during)) if during else None,
        "itl_p95_during_over_before": round(p95_during / p95_before, 2)
        if p95_during is not None and p95_before
        else None,
        "burst_ttft_p50_ms": _ms(percentile(burst_ttfts, 50)),
        "burst_ttft_p95_ms": _ms(percentile(burst_ttfts, 95)),
    }


def prefix_ttft(timings: Sequence[RequestTiming]) -> dict[str, dict[str, float | int | None]] | None:
    """TTFT by what a prefix cache could have done for the request (groups ``first:K`` / ``repeat:K``):

    - ``first``: the first request that showed image set K (nothing to reuse but the shared instruction);
    - ``repeat_after_first``: a later one, sent after the first request of K had its first token (its
      prefill done: a prefix cache holds that KV by then);
    - ``repeat_concurrent``: a later one sent while the first of K was still in prefill.

    None when no request has such a group.
    """
    firsts: dict[str, float | None] = {}
    for t in timings:
        kind, _, key = t.group.partition(":")
        if kind == "first" and key:
            firsts[key] = t.first
    if not firsts:
        return None
    classes: dict[str, list[RequestTiming]] = {"first": [], "repeat_after_first": [], "repeat_concurrent": []}
    for t in timings:
        kind, _, key = t.group.partition(":")
        if kind == "first":
            classes["first"].append(t)
        elif kind == "repeat":
            done = firsts.get(key)
            after = done is not None and done <= t.submitted
            classes["repeat_after_first" if after else "repeat_concurrent"].append(t)
    out: dict[str, dict[str, float | int | None]] = {}
    for name, members in classes.items():
        values = [v for t in members if (v := t.ttft()) is not None]
        out[name] = {
            "requests": len(members),
            "ttft_p50_ms": _ms(percentile(values, 50)),
            "ttft_p95_ms": _ms(percentile(values, 95)),
        }
    return out
