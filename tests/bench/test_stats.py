"""Percentiles and cell aggregation of the benchmark harness (pure, no torch)."""

from __future__ import annotations

import pytest

from bench.vlmbench.stats import RequestTiming, percentile, summarize


def test_percentile_matches_linear_interpolation() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(values, 0) == 15.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 40) == pytest.approx(29.0)  # rank 1.6 -> 20 + 0.6 * 15
    assert percentile(list(reversed(values)), 95) == pytest.approx(48.0)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def _request(submitted: float, first: float, gap: float, n: int, **kw: object) -> RequestTiming:
    return RequestTiming(submitted=submitted, events=[(first + i * gap, 1) for i in range(n)], **kw)  # type: ignore[arg-type]


def test_request_timing_metrics() -> None:
    t = _request(10.0, 10.2, 0.01, 101, completion_tokens=101)
    assert t.ttft() == pytest.approx(0.2)
    assert len(t.itls()) == 100
    assert all(g == pytest.approx(0.01) for g in t.itls())
    assert t.decode_rate() == pytest.approx(100.0)
    assert t.e2e_rate() == pytest.approx(101 / 1.2)


def test_multi_token_delta_counts_as_several_gaps() -> None:
    t = RequestTiming(submitted=0.0, events=[(1.0, 1), (1.3, 3)])
    assert t.tokens == 4
    assert t.itls() == pytest.approx([0.1, 0.1, 0.1])


def test_summarize_aggregates_over_the_cell() -> None:
    timings = [
        _request(0.0, 0.1, 0.02, 51, completion_tokens=51),
        _request(0.0, 0.3, 0.02, 51, completion_tokens=51),
        RequestTiming(submitted=0.0, events=[(0.5, 1)], error="cancelled at the cell's time limit"),
    ]
    m = summarize(timings, expected_tokens=51)
    assert m.requests == 3 and m.completed == 2 and m.errors == 1
    assert m.output_tokens == 103
    assert m.seconds == pytest.approx(1.3)  # first submit 0.0 -> last token 0.3 + 50 * 0.02
    assert m.output_tokens_per_s == pytest.approx(round(103 / 1.3, 1))
    assert m.ttft_p50_ms == pytest.approx(300.0)
    assert m.itl_p50_ms == pytest.approx(20.0)
    assert m.itl_p95_ms == pytest.approx(20.0)
    assert m.decode_tokens_per_s_p50 == pytest.approx(50.0)
    assert m.first_error == "cancelled at the cell's time limit"


def test_summarize_empty_cell() -> None:
    m = summarize([RequestTiming(submitted=1.0, error="HTTP 503")], expected_tokens=8)
    assert m.output_tokens == 0 and m.output_tokens_per_s is None and m.ttft_p50_ms is None
    assert m.completed == 0 and m.errors == 1


def test_burst_windows_split_the_running_streams_gaps() -> None:
    """Two streams tick every 10 ms; 16 requests arrive at t=1.0 and stall them (a 200 ms gap) until the
    last arrival's first token at t=1.25; gaps count in the window their ending token arrives in."""
    from bench.vlmbench.stats import burst_metrics

    def ticks(start: float, stop: float, step: float) -> list[tuple[float, int]]:
        n = round((stop - start) / step)
        return [(round(start + i * step, 6), 1) for i in range(n + 1)]

    running = [
        RequestTiming(submitted=0.0, events=ticks(0.5, 1.0, 0.01) + ticks(1.2, 1.5, 0.01), group="running")
        for _ in range(2)
    ]
    burst = [
        RequestTiming(submitted=1.0, events=[(1.2 + 0.05 * (i == 15), 1)], group="burst") for i in range(16)
    ]
    m = burst_metrics(running + burst, burst_at=1.0)
    assert (m["running_streams"], m["burst_requests"], m["burst_first_tokens"]) == (2, 16, 16)
    assert m["burst_window_ms"] == pytest.approx(250.0)
    assert m["itl_gaps_before"] == 2 * 50 and m["itl_p95_before_ms"] == pytest.approx(10.0)
    # during: the 200 ms stall, then 10 ms gaps up to t=1.25
    assert m["itl_gaps_during"] == 2 * 6 and m["itl_max_during_ms"] == pytest.approx(200.0)
    assert m["itl_p95_during_ms"] > 100 and m["itl_p95_during_over_before"] > 10
    assert m["burst_ttft_p50_ms"] == pytest.approx(200.0)
    # no burst sent (the client never got there): no windows, no crash
    assert burst_metrics(running, None)["itl_gaps_before"] == 0


def test_prefix_ttft_classes_follow_the_first_sight_of_each_image() -> None:
    from bench.vlmbench.stats import prefix_ttft

    timings = [
        RequestTiming(submitted=0.0, events=[(0.5, 1)], group="first:0"),
        RequestTiming(submitted=0.0, events=[(0.6, 1)], group="first:1"),
        RequestTiming(submitted=0.1, events=[(0.55, 1)], group="repeat:0"),  # sent during 0's prefill
        RequestTiming(submitted=0.7, events=[(0.75, 1)], group="repeat:1"),  # after 1's first token
        RequestTiming(submitted=0.8, events=[(0.82, 1)], group="repeat:0"),
    ]
    out = prefix_ttft(timings)
    assert out is not None
    assert {k: v["requests"] for k, v in out.items()} == {
        "first": 2,
        "repeat_after_first": 2,
        "repeat_concurrent": 1,
    }
    assert out["first"]["ttft_p50_ms"] == pytest.approx(550.0)
    assert out["repeat_after_first"]["ttft_p50_ms"] == pytest.approx(35.0)
    assert prefix_ttft([RequestTiming(submitted=0.0)]) is None
