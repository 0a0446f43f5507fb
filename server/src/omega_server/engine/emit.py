"""A request's per-token state: made when it is admitted (``start``), then each sampled token applied.

``deliver`` records one sampled token of a running request: the grammar's state, its text
(``detok``), the finish checks, its log-probabilities named by their text, and the delta sent to the
caller (``Seq.send``).
"""

from __future__ import annotations

from typing import Any

from omega_server.engine import grammar, sampler
from omega_server.engine.detok import IncrementalText
from omega_server.engine.runner import RawLogprob, Runner
from omega_server.engine.sequence import Seq
from omega_server.engine.types import StepOutput, TokenLogprob


def start(seq: Seq, runner: Runner) -> None:
    """A sequence's sampler and text state, made when it is admitted (a generator only for a seed)."""
    params = seq.prepared.params
    seq.generator = sampler.generator(params.seed, runner.device)
    if seq.prepared.constraint is not None:
        seq.constraint = seq.prepared.constraint.copy()
    seq.text = IncrementalText(runner.tokenizer, runner.eos_ids, params)


def deliver(seq: Seq, token: int, logprob: RawLogprob | None, tokenizer: Any) -> None:
    """Record a sampled token: its text (``detok``), the finish checks, and the delta sent out."""
    text = seq.text
    assert text is not None
    grammar.advance(seq, token)
    delta, finish = text.add(token)
    seq.done = finish is not None
    seq.send(
        StepOutput(
            text=delta,
            token_ids=[token],
            finished=seq.done,
            finish_reason=finish,
            prompt_tokens=seq.prepared.prompt_tokens,
            completion_tokens=len(text.token_ids),
            logprobs=None if logprob is None else [named(token, text.piece, logprob, seq, tokenizer)],
        )
    )


def named(token: int, piece: str, raw: RawLogprob, seq: Seq, tokenizer: Any) -> TokenLogprob:
    """A token's log-probability entry with text: the chosen token named by the text it completed
    (so that the entries join to the answer), each alternative by its own decoding."""
    value, top = raw
    top = top[: seq.prepared.params.top_logprobs]  # a batch computes its rows' largest number
    return TokenLogprob(
        token_id=token,
        token=piece,
        logprob=value,
        top=tuple((t, tokenizer.decode([t], skip_special_tokens=False), v) for t, v in top),
    )
