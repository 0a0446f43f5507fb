"""The structured-output mask (omega_server.engine.grammar) on a real byte-level tokenizer: only
tokens the schema allows keep their logits, a finished grammar allows only EOS, a matcher that
allows nothing lets the sequence end, and the other rows of the batch are untouched."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from omega_server.engine import grammar
from omega_server.engine.errors import InvalidRequestError
from omega_server.engine.sequence import Seq
from omega_server.engine.types import PreparedRequest, SamplingParams
from omega_server.tiny_text import build_tokenizer

EOS = "<|im_end|>"


@pytest.fixture(scope="module")
def grammars() -> grammar.Grammars:
    tok = build_tokenizer([EOS], bos=None, eos=EOS, pad=EOS)
    return grammar.Grammars(tok, len(tok), {tok.convert_tokens_to_ids(EOS)})


def seq(constraint: Any = None) -> Seq:
    p = PreparedRequest(inputs={}, prompt_tokens=0, params=SamplingParams(max_tokens=8))
    s = Seq(prepared=p, loop=None, queue=None)
    s.constraint = constraint
    return s


def allowed(scores: torch.Tensor) -> set[int]:
    return set(torch.nonzero(scores > float("-inf")).flatten().tolist())


def test_only_what_the_schema_allows_then_only_eos(grammars: grammar.Grammars) -> None:
    c = grammars.constraint(("json_schema", json.dumps({"type": "boolean"})))
    constrained, free = seq(c.copy()), seq()
    vocab = grammars.vocab
    scores = grammar.apply([free, constrained], torch.zeros(2, vocab))
    assert allowed(scores[0]) == set(range(vocab))  # the free row is untouched
    assert allowed(scores[1]) == {ord("t"), ord("f")}  # byte tokens: "true" or "false"
    for ch in "true":
        grammar.advance(constrained, ord(ch))
    assert allowed(grammar.apply([constrained], torch.zeros(1, vocab))[0]) == set(c.eos)
    # the template is not advanced by its copies
    assert allowed(grammar.apply([seq(c.copy())], torch.zeros(1, vocab))[0]) == {ord("t"), ord("f")}


def test_a_matcher_that_allows_nothing_lets_the_sequence_end(grammars: grammar.Grammars) -> None:
    s = seq(grammars.constraint(("json_schema", json.dumps({"type": "boolean"}))))
    assert s.constraint is not None
    s.constraint.matcher.consume_token(ord("x"))  # a token the mask would not have allowed
    assert allowed(grammar.apply([s], torch.zeros(1, grammars.vocab))[0]) == set(s.constraint.eos)


def test_a_schema_that_does_not_compile_names_response_format(grammars: grammar.Grammars) -> None:
    with pytest.raises(InvalidRequestError) as bad:
        grammars.constraint(("json_schema", json.dumps({"type": "nonsense"})))
    assert bad.value.param == "response_format"
