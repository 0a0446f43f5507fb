"""Per-request timings -> the metrics of one benchmark cell (pure functions, no torch).

A request is timed from the moment the driver submits it (before the chat template and the image
processor run, as in the server) to each token's arrival. Definitions:

- TTFT: first token arrival - submit.
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
    server reported (usage) when known, else the sum of the events.
    """

    submitted: float
    events: list[tuple[float, int]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None

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

    def itls(self) -> list[float]:
        """Inter-token gaps in seconds (a k-token delta yields k equal gaps)."""
        gaps: list[float] = []
        for (t0, _), (t1, n) in zip(self.events, self.events[1:], strict=False):
            n = max(n, 1)
            gaps.extend([(t1 - t0) / n] * n)
        return gaps

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
    )
