"""Result rows (issue 7's schema), file naming, the JSON file and the README table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.vlmbench.results import (
    REQUIRED_KEYS,
    check_row,
    device_slug,
    make_row,
    read_rows,
    results_path,
    write_rows,
)
from bench.vlmbench.stats import RequestTiming, summarize
from bench.vlmbench.table import README_BEGIN, README_END, markdown_table, replace_between_markers


def _row(**kw: object) -> dict[str, object]:
    timings = [
        RequestTiming(submitted=0.0, events=[(0.1 + i * 0.01, 1) for i in range(11)]) for _ in range(4)
    ]
    args: dict[str, object] = {
        "model": "omega17_vl_exp",
        "backend": "sdpa",
        "driver": "engine",
        "concurrency": 4,
        "metrics": summarize(timings, 11),
        "peak_gpu_mem_gb": 63.456,
        "baseline_output_tokens_per_s": 28.6,
        "roofline_output_tokens_per_s": 839.91,
        "versions": {"torch": "2.11.0"},
        "command": "python -m bench.vlmbench run",
    }
    args.update(kw)
    return make_row(**args)  # type: ignore[arg-type]


def test_row_has_the_required_keys_first() -> None:
    row = _row(note_extra="x")
    assert tuple(row)[: len(REQUIRED_KEYS)] == REQUIRED_KEYS
    assert row["peak_gpu_mem_gb"] == 63.46 and row["roofline_output_tokens_per_s"] == 839.9
    assert row["itl_p50_ms"] == pytest.approx(10.0)
    assert row["decode_tokens_per_s_p50"] == pytest.approx(100.0)
    # 4 sequences decoding at 100 tok/s each against a roofline of 839.9 at batch 4
    assert row["roofline_fraction"] == pytest.approx(400 / 839.9, abs=1e-3)
    assert row["versions"] == {"torch": "2.11.0"} and str(row["command"]).startswith("python")
    assert row["note_extra"] == "x"
    check_row(row)


def test_row_validation() -> None:
    with pytest.raises(ValueError, match="driver"):
        _row(driver="curl")
    row = _row()
    del row["itl_p50_ms"]
    with pytest.raises(ValueError, match="itl_p50_ms"):
        check_row(row)
    with pytest.raises(ValueError, match="number"):
        check_row({**_row(), "output_tokens_per_s": "fast"})


def test_file_naming() -> None:
    assert device_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert device_slug("cpu") == "cpu"
    assert results_path("bench/results", "NVIDIA H100 80GB HBM3", "2026-11-24") == Path(
        "bench/results/h100-80gb-hbm3-2026-11-24.json"
    )
    with pytest.raises(ValueError):
        results_path("x", "cpu", "24.11.2026")


def test_write_read_and_table(tmp_path: Path) -> None:
    rows = [_row(), _row(driver="http", error="HTTP 503: | busy"), _row(driver="generate", complete=False)]
    path = write_rows(tmp_path / "r.json", rows)
    assert json.loads(path.read_text())[0]["model"] == "omega17_vl_exp"
    assert read_rows([path, path]) == rows + rows
    table = markdown_table(rows).splitlines()
    assert len(table) == 2 + 3
    assert table[0].startswith("| model | backend | driver | decode path | conc | out tok/s")
    assert all(line.count("|") == table[0].count("|") for line in table)  # pipes in errors are escaped
    assert "| 4/4 |" in table[2] and "HTTP 503" in table[3]
    assert "time limit" in table[4]


def test_readme_markers_are_replaced_in_place() -> None:
    text = "# Bench\n\nintro\n"
    once = replace_between_markers(text, "| a |")
    assert once.count(README_BEGIN) == 1 and "| a |" in once and once.startswith("# Bench")
    twice = replace_between_markers(once + "\ntail\n", "| b |")
    assert "| a |" not in twice and "| b |" in twice and twice.rstrip().endswith("tail")
    assert twice.count(README_END) == 1


def test_cli_merge_and_table_update_the_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.vlmbench.__main__ import main

    a = write_rows(tmp_path / "a.json", [_row()])
    b = write_rows(tmp_path / "b.json", [_row(driver="http")])
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "all.json")]) == 0
    assert [r["driver"] for r in read_rows([tmp_path / "all.json"])] == ["engine", "http"]
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\nold\n{README_END}\n")
    assert main(["table", str(tmp_path / "all.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.count("| omega17_vl_exp |") == 2
    assert "| omega17_vl_exp |" in capsys.readouterr().out


def test_decode_path_column() -> None:
    from bench.vlmbench.table import decode_path

    assert decode_path({"driver": "generate"}) == "generate()"
    assert decode_path({"driver": "engine"}) == "dynamic"
    assert decode_path({"driver": "http", "kv_cache": "static", "cuda_graphs": True}) == "static+graphs"


def test_select_rows() -> None:
    from bench.vlmbench.results import select_rows

    rows: list[dict[str, object]] = [
        {"model": "a", "complete": True, "versions": {"git": "x1"}},
        {"model": "b", "complete": False, "versions": {"git": "x2"}},
        {"model": "c", "versions": {"git": "x2"}},
    ]
    assert [r["model"] for r in select_rows(rows, ["versions.git=x2"])] == ["b", "c"]
    assert [r["model"] for r in select_rows(rows, ["model=a|c"])] == ["a", "c"]
    assert [r["model"] for r in select_rows(rows, [], complete_only=True)] == ["a", "c"]
