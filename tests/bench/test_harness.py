"""The whole harness on the CPU with tiny models of both architectures: real engine, real server app
over real HTTP (client in its own process), the generate() baseline, the flash fallback row, the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.vlmbench import shapes
from bench.vlmbench.results import REQUIRED_KEYS
from bench.vlmbench.run import RunConfig, engine_batch_size, plan_cells, run
from bench.vlmbench.workload import Workload


def test_plan_cells_order() -> None:
    assert plan_cells(["engine", "http"], [4, 1], True, 4) == [
        ("generate", 4),
        ("engine", 1),
        ("http", 1),
        ("engine", 4),
        ("http", 4),
    ]
    assert plan_cells(["engine"], [2], False, 4) == [("engine", 2)]
    with pytest.raises(ValueError):
        plan_cells(["grpc"], [1], False, 4)


def test_engine_batch_size_follows_the_cells_asked_for(tmp_path: Path) -> None:
    """Explicit cells size the engine; the default concurrency list does not (it made runs of c=1,4
    cells build and compile 64 slots)."""
    base = {"models": ["m"], "out_dir": tmp_path, "workdir": tmp_path}
    assert engine_batch_size(RunConfig(**base, cells=[("engine", 1), ("http", 4)])) == 4
    assert engine_batch_size(RunConfig(**base, concurrency=[1, 16])) == 16
    assert engine_batch_size(RunConfig(**base, cells=[("engine", 1)], max_batch_size=8)) == 8


def test_tokenizer_fills_the_vocabulary_and_every_id_decodes() -> None:
    tok = shapes.build_tokenizer(1024)
    assert len(tok) == 1024
    assert tok("hello")["input_ids"] == list(b"hello")  # one token per byte: exact prompt lengths
    assert all(tok.decode([i]) for i in range(256, 1024 - len(shapes.SPECIALS)))
    ids = shapes.special_ids(tok)
    assert min(ids.values()) >= 1024 - len(shapes.SPECIALS)


def test_special_tokens_are_silenced(tmp_path: Path) -> None:
    from omega_server import models

    ckpt = shapes.write_checkpoint(shapes.get_shape("tiny_qwen2_5_vl"), tmp_path / "ckpt")
    assert not list(ckpt.glob("*.safetensors"))  # weightless
    with shapes.random_weights(seed=3) as built:
        loaded = models.load(ckpt, attn_implementation="sdpa", dtype="float32", device="cpu")
    assert built.last is loaded.model
    head = loaded.model.get_output_embeddings().weight
    silenced = shapes.silenced_token_ids(loaded.model.config)
    assert silenced[-1] == 1023 and loaded.model.config.text_config.eos_token_id in silenced
    assert float(head.detach()[silenced].abs().sum()) == 0.0
    assert float(head.detach()[: silenced[0]].abs().sum()) > 0.0


def test_full_matrix_on_tiny_models(tmp_path: Path) -> None:
    lines: list[str] = []
    cfg = RunConfig(
        models=["tiny_qwen3_vl_moe", "tiny_qwen2_5_vl"],
        out_dir=tmp_path / "out",
        workdir=tmp_path / "work",
        backends=["sdpa", "flash_attention_2"],
        drivers=["engine", "http"],
        concurrency=[1, 3],
        workload=Workload(prompt_tokens=80, output_tokens=6, image_size=56),
        baseline_batch=2,
        dtype="float32",
        device="cpu",
        cell_time_limit_s=60,
        command="pytest",
        log=lines.append,
    )
    rows = run(cfg)
    files = list((tmp_path / "out").glob("cpu-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == rows
    for row in rows:
        assert all(key in row for key in REQUIRED_KEYS)
    measured = [r for r in rows if r["backend"] == "sdpa"]
    assert [(r["model"], r["driver"], r["concurrency"]) for r in measured] == [
        (m, d, c)
        for m in ("tiny_qwen3_vl_moe", "tiny_qwen2_5_vl")
        for d, c in (("generate", 2), ("engine", 1), ("http", 1), ("engine", 3), ("http", 3))
    ]
    for r in measured:
        assert r["output_tokens_per_s"] > 0, r
        assert r["complete"] is True and r["output_tokens_per_request"] == 6, r  # EOS never ends early
        assert r["prompt_tokens"] == 80, r
        assert r["baseline_output_tokens_per_s"] > 0 and r["roofline_output_tokens_per_s"] > 0
        if r["driver"] != "generate":
            assert r["completed"] == r["concurrency"] and r["errors"] == 0
            assert r["ttft_p50_ms"] > 0 and r["itl_p50_ms"] > 0 and r["ttft_p95_ms"] >= r["ttft_p50_ms"]
    # no flash-attn on this machine: the flash attempt is one row that says it fell back
    flash = [r for r in rows if r["backend"] == "flash_attention_2"]
    assert len(flash) == 2 and all(r["attn"] == "sdpa" and r["output_tokens_per_s"] is None for r in flash)
    assert all("FlashAttention2" in r["error"] or "flash" in r["error"].lower() for r in flash)
    assert any("fell back to sdpa" in line for line in lines)


def test_isolated_children_get_the_same_options(tmp_path: Path) -> None:
    """--isolate runs one child per (model, backend); each child must parse to the parent's options."""
    from bench.vlmbench.__main__ import _child_argv, parser

    argv = [
        "run",
        "--models=omega17_vl_exp,qwen2_5_vl_7b",
        "--backends=sdpa,flash_attention_2",
        "--cells=generate:4,engine:1,http:64",
        "--profile=1,4",
        "--baseline-tokens=256",
        "--cell-time-limit=40",
        "--no-baseline",
        "--max-batch-size=32",
        f"--out={tmp_path}",
        "--isolate",
    ]
    parent = parser().parse_args(argv)
    child = parser().parse_args(_child_argv(parent, "qwen2_5_vl_7b", "sdpa", tmp_path / "part.json", 99.4))
    assert (child.models, child.backends, child.isolate) == (["qwen2_5_vl_7b"], ["sdpa"], False)
    assert child.results_file == tmp_path / "part.json" and child.deadline == 99.0
    for key in (
        "cells",
        "profile",
        "baseline_tokens",
        "cell_time_limit",
        "no_baseline",
        "max_batch_size",
        "out",
    ):
        assert getattr(child, key) == getattr(parent, key), key


def test_workloads_and_peer_options_parse_and_reach_the_children(tmp_path: Path) -> None:
    """--workloads takes name[:concurrency] (a name alone: its default concurrencies); in --isolate each
    (model, backend) child gets the workloads, and one peer child per model gets the peer options."""
    import argparse

    from bench.vlmbench.__main__ import _child_argv, _workloads, parser

    assert _workloads("vision4x1024,prefix:8") == [("vision4x1024", 1), ("vision4x1024", 16), ("prefix", 8)]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown workload"):
        _workloads("video")
    argv = [
        "run",
        "--models=omega17_vl_exp",
        "--backends=sdpa,flash_attention_2",
        "--cells=http:1,http:4,http:64",
        "--workloads=vision4x1024:16,json_schema",
        "--peer=generate_batch,serve",
        "--peer-tokens=48",
        '--peer-cb-config={"num_blocks": 64}',
        "--max-model-length=32768",
        "--tag=issue16",
        "--isolate",
    ]
    parent = parser().parse_args(argv)
    ours = parser().parse_args(_child_argv(parent, "omega17_vl_exp", "sdpa", tmp_path / "a.json", None))
    assert ours.workloads == [("vision4x1024", 16), ("json_schema", 1), ("json_schema", 64)]
    assert ours.peer == [] and ours.standard is True and ours.max_model_length == 32768
    peer = parser().parse_args(_child_argv(parent, "omega17_vl_exp", None, tmp_path / "p.json", 100.0))
    assert (peer.backends, peer.peer, peer.standard, peer.workloads) == (
        [],
        ["generate_batch", "serve"],
        False,
        [],
    )
    assert (
        peer.peer_concurrency == [1, 4, 64]
        and peer.peer_tokens == 48
        and peer.peer_cb_config == {"num_blocks": 64}
    )
