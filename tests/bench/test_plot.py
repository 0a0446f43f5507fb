"""`python -m bench.vlmbench plot`: the lines and points drawn from a results file, and the PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench.vlmbench.plot import series
from bench.vlmbench.results import write_rows


def _row(
    driver: str, backend: str, conc: int, tps: float, ttft: float | None, **extra: Any
) -> dict[str, Any]:
    return {
        "model": "omega17_vl_exp",
        "backend": backend,
        "driver": driver,
        "concurrency": conc,
        "output_tokens_per_s": tps,
        "ttft_p50_ms": ttft,
        "ttft_p95_ms": None,
        "itl_p50_ms": None,
        "peak_gpu_mem_gb": None,
        "baseline_output_tokens_per_s": None,
        "roofline_output_tokens_per_s": 780.0 * conc**0.5,
        "versions": {"device": "NVIDIA H200"},
        "command": "synthetic",
        **extra,
    }


ROWS = [
    _row("http", "sdpa", 1, 90.0, 130.0, scenario="standard"),
    _row("http", "sdpa", 1, 106.0, 104.0, scenario="standard"),  # a later repeat: this one is drawn
    _row("http", "sdpa", 4, 331.0, 300.0),
    _row("http", "sdpa", 64, 2533.0, 1900.0),
    _row("http", "flash_attention_2", 1, 15.5, 140.0, compiled=True),
    _row("peer", "paged|flash_attention_2", 1, 7.0, 90.0),
    _row("peer", "paged|flash_attention_2", 64, 315.0, 4000.0),
    _row("peer_http", "sdpa", 1, 6.0, 200.0),
    _row("http", "sdpa", 16, 999.0, 50.0, scenario="vision4x1024"),  # not the standard workload: left out
    _row("http", "sdpa", 2, None, None),  # an error row: no point
]


def test_series_has_a_line_per_backend_driver_and_peer() -> None:
    (key,) = series(ROWS)
    lines = series(ROWS)[key]
    assert key == ("NVIDIA H200", "omega17_vl_exp")
    assert lines["sdpa http"] == [(1, 106.0, 104.0), (4, 331.0, 300.0), (64, 2533.0, 1900.0)]
    assert lines["flash_attention_2 http compiled"] == [(1, 15.5, 140.0)]
    assert lines["peer: generate_batch"] == [(1, 7.0, 90.0), (64, 315.0, 4000.0)]
    assert lines["peer: transformers serve"] == [(1, 6.0, 200.0)]
    assert [p[0] for p in lines["roofline"]] == [1, 4, 64] and lines["roofline"][0][1] == pytest.approx(780.0)


def test_the_cli_writes_a_png_per_device_and_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.vlmbench.__main__ import main

    results = write_rows(tmp_path / "h200-2026-12-04.json", ROWS[:-1])
    other = write_rows(tmp_path / "other.json", [{**ROWS[2], "model": "qwen2_5_vl_7b"}])
    assert (
        main(["plot", str(results), str(other), "--out", str(tmp_path / "plots"), "--prefix", "run1-"]) == 0
    )
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["run1-h200-omega17_vl_exp.png", "run1-h200-qwen2_5_vl_7b.png"]
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == (1150, 440)
    assert str(pngs[0]) in capsys.readouterr().out
