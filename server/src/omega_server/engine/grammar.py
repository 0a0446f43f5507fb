"""Structured output: a request's grammar (``response_format``) as an llguidance matcher per sequence,
and the batch's allowed-token masks applied to the logits on the device.

``SamplingParams.grammar`` is ``("json_schema", schema JSON)`` (``json_object`` is the schema
``{"type": "object"}``). ``Grammars.constraint`` compiles it when the request is prepared (a schema
the compiler refuses is a 400 naming ``response_format``); each sequence gets its own copy of that
matcher when it is admitted. Each sampling step fills one bitmask row per constrained sequence on the
host (llguidance's Rust, several rows in parallel threads), copies it to the device and masks the
logits there; after each token the engine advances the matcher (``advance``). A finished grammar
allows only the end-of-sequence tokens, so a constrained answer ends when its JSON does.

The JSON is compact (no free whitespace: a model cannot pad forever). llguidance was chosen over
xgrammar and outlines-core: README "Structured output" gives the measurements and the reasons.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from omega_server.engine.errors import InvalidRequestError

if TYPE_CHECKING:
    from omega_server.engine.sequence import Seq

#: JSON compiler options: compact separators, no whitespace between tokens
JSON_OPTIONS: Any = {"whitespace_flexible": False}


def grammar_text(kind: str, spec: str) -> str:
    """The llguidance grammar of a request's ``SamplingParams.grammar``."""
    import llguidance

    if kind != "json_schema":
        raise InvalidRequestError(f"unknown grammar kind {kind!r}", param="response_format")
    try:
        schema = json.loads(spec)
        return str(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise InvalidRequestError(
            f"response_format: the JSON schema cannot be compiled: {exc}", param="response_format"
        ) from None


class Grammars:
    """The model's tokenizer in llguidance's form (made at the first constrained request) and its matchers."""

    def __init__(self, tokenizer: Any, vocab: int, eos_ids: set[int]) -> None:
        self._hf = tokenizer
        self.vocab = vocab
        self._eos = sorted(eos_ids)
        self._tokenizer: Any = None
        self._executor: Any = None
        self._lock = threading.Lock()

    def _llg(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                import llguidance
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf, n_vocab=self.vocab, eos_token=self._eos or None
                )
                self._executor = llguidance.LLExecutor()
            return self._tokenizer

    def constraint(self, grammar: tuple[str, str]) -> Constraint:
        """A request's compiled grammar in its start state (when the request is prepared, off the
        worker thread); refuses one llguidance cannot compile for this tokenizer (InvalidRequestError)."""
        import llguidance

        text = grammar_text(*grammar)
        tokenizer = self._llg()
        error = llguidance.LLMatcher.validate_grammar(text, tokenizer)
        if error and not error.startswith("WARNING"):
            raise InvalidRequestError(f"response_format: {error}", param="response_format")
        return Constraint(llguidance.LLMatcher(tokenizer, text), tuple(self._eos), self._executor)


@dataclass
class Constraint:
    """One sequence's grammar state: its matcher, the tokens that end it, the shared thread pool."""

    matcher: Any
    eos: tuple[int, ...]
    executor: Any

    def copy(self) -> Constraint:
        """The same state for another sequence (a request's choices each get their own)."""
        return Constraint(self.matcher.deep_copy(), self.eos, self.executor)


def apply(seqs: list[Seq], scores: torch.Tensor) -> torch.Tensor:
    """``scores`` with every constrained row's disallowed tokens at minus infinity."""
    rows = [i for i, s in enumerate(seqs) if s.constraint is not None]
    if not rows:
        return scores
    import llguidance.torch as lt

    vocab = scores.shape[-1]
    words = (vocab + 31) // 32
    cuda = scores.device.type == "cuda"
    mask = torch.zeros((len(rows), words), dtype=torch.int32, pin_memory=cuda)
    constraints = [c for c in (seqs[i].constraint for i in rows) if c is not None]
    if len(constraints) == 1:
        lt.fill_next_token_bitmask(constraints[0].matcher, mask, 0)
    else:
        pairs = [(c.matcher, j) for j, c in enumerate(constraints)]
        lt.fill_next_token_bitmask_par(constraints[0].executor, pairs, mask)
    empty = (~mask.any(dim=1)).tolist()  # a matcher in error allows nothing: let it end instead
    for j, c in enumerate(constraints):
        if empty[j]:
            for eos in c.eos:
                bit = 1 << (eos % 32)
                mask[j, eos // 32] |= bit - (1 << 32) if bit >= 1 << 31 else bit
    device_mask = mask.to(scores.device, non_blocking=True)
    bits = torch.arange(32, device=scores.device, dtype=torch.int32)
    allowed = ((device_mask[:, :, None] >> bits) & 1).bool().reshape(len(rows), words * 32)[:, :vocab]
    index = torch.tensor(rows, device=scores.device)
    sub = scores.index_select(0, index).masked_fill(~allowed, float("-inf"))
    return scores.index_copy(0, index, sub)


def advance(seq: Seq, token: int) -> None:
    """Feed a sampled token to the sequence's matcher (a token the mask allowed)."""
    c = seq.constraint
    if c is not None and not c.matcher.is_stopped():
        c.matcher.consume_token(token)
