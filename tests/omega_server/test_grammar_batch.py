"""Structured output in a batch (omega_server.engine.grammar's batched mask): on the static slot cache,
constrained and free greedy rows give the same tokens together as each alone, eight constrained rows
at once are all schema-valid, and a grammar failure in one row ends that request only."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from omega_server.engine import Engine, EngineConfig, grammar
from omega_server.engine.types import GenerationRequest, SamplingParams, StepOutput

from tests.omega_server.test_structured_output import SCHEMA

MSGS: Any = [{"role": "user", "content": [{"type": "text", "text": "json please"}]}]
GRAMMAR = ("json_schema", json.dumps(SCHEMA))


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Callable[[str], Path]) -> Iterator[Engine]:
    eng = Engine.load(
        EngineConfig(
            model_path=str(tiny_checkpoint("qwen2_5_vl")),
            attn_impl="sdpa",
            kv_cache="static",
            max_batch_size=8,
        )
    )
    yield eng
    eng.shutdown()


def run_all(eng: Engine, params: list[SamplingParams]) -> list[list[StepOutput] | BaseException]:
    """All requests at once (each on its own thread), their deltas or their error, in order."""
    prepared = [eng.prepare(GenerationRequest(MSGS, p)) for p in params]
    out: list[Any] = [None] * len(prepared)

    def one(i: int) -> None:
        try:
            out[i] = eng.generate_sync(prepared[i], timeout=120)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prepared))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    return out


def tokens(outs: Any) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def test_constrained_and_free_rows_together_give_their_tokens_alone(engine: Engine) -> None:
    params = [
        SamplingParams(max_tokens=60, temperature=0.0, grammar=GRAMMAR),
        SamplingParams(max_tokens=24, temperature=0.0),
        SamplingParams(max_tokens=60, temperature=0.0, grammar=("json_schema", '{"type": "object"}')),
        SamplingParams(max_tokens=16, temperature=0.0),
    ]
    alone = [tokens(run_all(engine, [p])[0]) for p in params]
    together = [tokens(o) for o in run_all(engine, params)]
    assert together == alone


def test_many_constrained_rows_are_all_valid(engine: Engine) -> None:
    params = [SamplingParams(max_tokens=200, temperature=1.0, seed=s, grammar=GRAMMAR) for s in range(8)]
    for outs in run_all(engine, params):
        assert not isinstance(outs, BaseException)
        assert outs[-1].finish_reason == "stop"
        jsonschema.validate(json.loads("".join(o.text for o in outs)), SCHEMA)


def test_a_grammar_error_in_one_row_fails_that_request_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = grammar.advance
    bad_seed = 99

    def advance(seq: Any, token: int) -> None:
        if seq.prepared.params.seed == bad_seed and len(seq.text.token_ids) >= 3:
            raise RuntimeError("grammar state broken")
        real(seq, token)

    monkeypatch.setattr(grammar, "advance", advance)
    params = [SamplingParams(max_tokens=200, temperature=1.0, seed=s, grammar=GRAMMAR) for s in range(3)]
    params.insert(1, SamplingParams(max_tokens=200, temperature=1.0, seed=bad_seed, grammar=GRAMMAR))
    outs = run_all(engine, params)
    assert isinstance(outs[1], Exception) and "grammar state broken" in str(outs[1])
    for good in outs[:1] + outs[2:]:
        assert not isinstance(good, BaseException)
        jsonschema.validate(json.loads("".join(o.text for o in good)), SCHEMA)
