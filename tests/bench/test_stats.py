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
