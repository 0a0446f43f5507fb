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
    h200 = replace_between_markers(twice, "| h200 |", section="h200")
    assert "| b |" in h200 and "<!-- results:h200:begin -->\n| h200 |\n<!-- results:h200:end -->" in h200
    again = replace_between_markers(h200, "| h200 again |", section="h200")
    assert "| b |" in again and "| h200 |" not in again and again.count("results:h200:begin") == 1


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


def test_older_rows_keep_the_issue_7_columns() -> None:
    """No optional column for rows without its data: the H100 tables come out as they always did."""
    from bench.vlmbench.table import TABLE_COLUMNS, table_columns

    assert table_columns([_row(), _row(driver="http")]) == list(TABLE_COLUMNS)


def test_ours_over_the_peer_in_the_same_cell() -> None:
    from bench.vlmbench.table import peer_ratio, sort_rows

    wl = {"workload": {"prompt_tokens": 512, "output_tokens": 512}, "scenario": "standard"}
    dev = {"versions": {"device": "NVIDIA H200"}}
    bw = {"bandwidth": {"datasheet_bytes_per_s": 4.8e12, "copy_bytes_per_s": 4.31e12}}
    ours = _row(driver="http", **wl, **dev, **bw)
    ours["output_tokens_per_s"] = 300.0
    peer = _row(driver="peer", backend="paged|sdpa", **wl, **dev, **bw)
    peer["output_tokens_per_s"] = 25.0
    serve = _row(driver="peer_http", **wl, **dev)
    serve["output_tokens_per_s"] = 8.0
    other_device = _row(driver="peer", **wl, versions={"device": "NVIDIA H100 80GB HBM3"})
    other_cell = _row(driver="peer", concurrency=64, **wl, **dev)
    vision = {**ours, "scenario": "vision4x1024"}
    rows = [ours, peer, serve, other_device, other_cell, vision]
    assert peer_ratio(ours, rows, "peer") == pytest.approx(12.0)
    assert peer_ratio(ours, rows, "peer_http") == pytest.approx(37.5)
    assert peer_ratio(peer, rows, "peer") is None and peer_ratio(vision, rows, "peer") is None
    table = markdown_table(rows).splitlines()
    head = [c.strip() for c in table[0].split("|")]
    for title in ("workload", "vs peer", "vs serve", "BW TB/s sheet/copy"):
        assert title in head
    first = [c.strip() for c in table[2].split("|")]
    assert first[head.index("vs peer")] == "12.0x" and first[head.index("vs serve")] == "37.5x"
    assert first[head.index("BW TB/s sheet/copy")] == "4.80/4.31"
    ordered = sort_rows(rows)  # per workload: ours first, then the peers
    assert ordered[0] is ours and ordered[-1] is vision
    assert {r["driver"] for r in ordered[1:-1]} == {"peer", "peer_http"}


def test_results_file_names_carry_the_device_and_tag() -> None:
    assert results_path("out", "NVIDIA H200", "2026-12-04") == Path("out/h200-2026-12-04.json")
    assert results_path("out", "NVIDIA H200", "2026-12-04", "issue16 peer") == Path(
        "out/h200-2026-12-04-issue16-peer.json"
    )


def test_versions_name_the_commit_and_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.vlmbench.results import source_digest, versions

    monkeypatch.setenv("BENCH_COMMIT", "deadbee")
    v = versions()
    assert v["git"] == "deadbee" and v["git_source"] == "BENCH_COMMIT"
    assert v["source_digest"] == source_digest() and len(v["source_digest"]) == 12
    assert {"torch", "transformers", "triton", "flash_attn", "device"} <= set(v)
    assert v["triton"] == "3.6.0" and v["device"] == "cpu"
