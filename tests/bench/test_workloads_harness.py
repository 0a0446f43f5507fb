"""One bench run on the CPU with a tiny model: the standard cells over HTTP, every extra workload (at tiny
sizes) on an engine of its own, and the peer (transformers' continuous batching and transformers serve);
then what each part's rows say. Real engine, real server app, real HTTP client in its own process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.vlmbench import shapes
from bench.vlmbench.context import RunConfig
from bench.vlmbench.results import check_row
from bench.vlmbench.run import run
from bench.vlmbench.scenario_cells import estimate_prompt_tokens
from bench.vlmbench.scenarios import SCENARIOS
from bench.vlmbench.table import markdown_table
from bench.vlmbench.workload import Workload

MODEL = "tiny_qwen2_5_vl"
TINY = {
    "vision4x1024": SCENARIOS["vision4x1024"].with_(image_size=64, text_chars=16, output_tokens=5),
    "vision1x1792": SCENARIOS["vision1x1792"].with_(image_size=112, text_chars=16, output_tokens=5),
    "prefix": SCENARIOS["prefix"].with_(
        image_size=56, system_chars=60, distinct_images=3, requests=12, output_tokens=4
    ),
    "burst": SCENARIOS["burst"].with_(
        prompt_tokens=80,
        image_size=56,
        output_tokens=400,
        burst_requests=3,
        burst_after_tokens=5,
        burst_output_tokens=4,
    ),
    "json_schema": SCENARIOS["json_schema"].with_(prompt_tokens=240, image_size=56, output_tokens=6),
}


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[str], Path]:
    tmp = tmp_path_factory.mktemp("bench")
    lines: list[str] = []
    cfg = RunConfig(
        models=[MODEL],
        out_dir=tmp / "out",
        workdir=tmp / "work",
        backends=["sdpa"],
        cells=[("http", 1), ("http", 2)],
        workload=Workload(prompt_tokens=80, output_tokens=6, image_size=56),
        dtype="float32",
        device="cpu",
        cell_time_limit_s=60,
        workloads=[("vision4x1024", 1), ("vision1x1792", 2), ("prefix", 3), ("burst", 2), ("json_schema", 2)],
        scenarios=TINY,
        peer=["generate_batch", "serve"],
        peer_tokens=4,
        peer_serve_tokens=3,
        peer_serve_concurrency=[1, 2],
        peer_cb_config={"num_blocks": 32, "max_batch_tokens": 512},
        copy_bytes=8 << 20,
        tag="test",
        command="pytest",
        log=lines.append,
    )
    rows = run(cfg)
    files = list((tmp / "out").glob("cpu-*-test.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == rows
    return rows, lines, files[0]


def _rows(result: tuple[list[dict[str, Any]], list[str], Path], **where: Any) -> list[dict[str, Any]]:
    return [r for r in result[0] if all(r.get(k) == v for k, v in where.items())]


def test_every_row_is_valid_and_records_both_bandwidths(result: Any) -> None:
    rows, lines, _ = result
    assert len(rows) == 2 + 6 + 2 + 2  # standard, 5 workloads (+ json_schema_off), 2 generate_batch, 2 serve
    for row in rows:
        check_row(row)
        bw = row["bandwidth"]
        assert bw["device"] == "cpu" and bw["datasheet_bytes_per_s"] is None and bw["copy_bytes_per_s"] > 0
        assert (
            row["roofline_output_tokens_per_s"] == row["roofline_copy_output_tokens_per_s"]
        )  # the CPU: copy
        assert row["versions"]["source_digest"] and "triton" in row["versions"]
    assert any(line.startswith("[bandwidth] cpu:") for line in lines)


def test_the_vision_workloads_send_their_images(result: Any) -> None:
    shape = shapes.get_shape(MODEL)
    processor = shapes.build_processor(shape, shapes.build_tokenizer(shape.vocab_size))
    for name, conc in (("vision4x1024", 1), ("vision1x1792", 2)):
        (row,) = _rows(result, scenario=name)
        assert row["driver"] == "http" and row["concurrency"] == conc and row["complete"] is True, row
        # the engine's count of the prompt is the processor's: the 4 images (or the large one) went through
        assert row["prompt_tokens"] == estimate_prompt_tokens(processor, TINY[name])
        assert row["workload"]["images_per_request"] == TINY[name].images_per_request
        assert row["ttft_p50_ms"] > 0 and row["output_tokens_per_s"] > 0
        assert row["max_model_length"] >= row["prompt_tokens"] + TINY[name].output_tokens
    # the workloads' engine is sized for all of them: the burst's 2 + 3 streams at once
    assert _rows(result, scenario="burst")[0]["max_batch_size"] == 5


def test_the_prefix_workload_runs_a_closed_loop_and_classifies_requests(result: Any) -> None:
    (row,) = _rows(result, scenario="prefix")
    assert row["requests"] == 12 and row["completed"] == 12 and row["client"]["not_sent"] == 0
    groups = row["ttft_by_group"]
    assert groups["first"]["requests"] == 3
    assert sum(g["requests"] for g in groups.values()) == 12
    # with 3 in flight, the 4th request is sent only after one finished: a repeat after its first sight
    assert groups["repeat_after_first"]["requests"] >= 1
    assert row["workload"]["system_chars"] == 60 and row["workload"]["distinct_images"] == 3


def test_the_burst_workload_measures_the_running_streams(result: Any) -> None:
    (row,) = _rows(result, scenario="burst")
    burst = row["burst"]
    assert (burst["running_streams"], burst["burst_requests"], burst["burst_first_tokens"]) == (2, 3, 3)
    assert burst["itl_gaps_before"] >= 2 * 4 and burst["itl_gaps_during"] >= 1
    assert burst["itl_p95_before_ms"] > 0 and burst["itl_p95_during_ms"] > 0 and burst["burst_window_ms"] > 0
    assert row["complete"] is True and row["errors"] == 0
    assert row["finish_reasons"].get("stopped after the burst") == 2  # the running streams, once it was over
    assert row["client"]["burst_at"] > 0


def test_the_json_schema_workload_is_refused_clearly_or_answered_in_json(result: Any) -> None:
    off, on = _rows(result, scenario="json_schema_off"), _rows(result, scenario="json_schema")
    assert len(off) == len(on) == 1 and result[0].index(off[0]) < result[0].index(on[0])
    assert (
        off[0]["complete"] is True
        and off[0]["prompt_tokens"] == 240
        and off[0]["workload"]["response_format"] is None
    )
    row = on[0]
    assert row["workload"]["response_format"]["type"] == "json_schema"
    if row["refused"]:  # today's server: every request a 400 that names the field; the run went on
        assert row["errors"] == row["requests"] == 2 and row["output_tokens_per_s"] is None
        assert row["first_error"].startswith("HTTP 400") and "response_format" in row["first_error"]
        assert "HTTP 400" in markdown_table([row])
    else:  # the server constrains the output: every request answered, json_valid counted; here the
        # tiny random model's 6 tokens cannot close the schema's object (its strings are unbounded),
        # so validity is what a real model's row shows (tests/omega_server/test_structured_output)
        assert row["errors"] == 0 and row["json_answered"] == 2 and 0 <= row["json_valid"] <= 2


def test_the_peer_rows_and_the_ratio_columns(result: Any) -> None:
    cb = _rows(result, driver="peer")
    assert [r["concurrency"] for r in cb] == [1, 2]
    for r in cb:
        assert r["backend"] == "paged|sdpa" and r["peer"] == "generate_batch" and r["prompt_tokens"] == 80
        assert r["output_tokens_per_request"] == 4 and r["peer_tokens"] == 4
        assert r["output_tokens_per_s"] > 0 and r["output_tokens_per_s_measured"] > 0
        assert "projected to 6" in r["peer_note"] and r["ttft_p50_ms"] > 0
    serve = _rows(result, driver="peer_http")
    assert [r["concurrency"] for r in serve] == [1, 2]
    assert all(
        r["prompt_tokens"] == 80 and r["errors"] == 0 and r["output_tokens_per_request"] == 3 for r in serve
    )
    assert serve[1]["decode_concurrency"] == pytest.approx(1.0, abs=0.05)  # one request at a time
    lines = markdown_table(result[0]).splitlines()
    head = [c.strip() for c in lines[0].split("|")]
    assert "vs peer" in head and "vs serve" in head and "workload" in head and "BW TB/s sheet/copy" in head
    ours = [line for line in lines if "| http | standard |" in line]
    assert len(ours) == 2
    for line in ours:
        cells = [c.strip() for c in line.split("|")]
        assert cells[head.index("vs peer")].endswith("x") and cells[head.index("vs serve")].endswith("x")
