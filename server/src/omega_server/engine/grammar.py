"""Structured output: a request's grammar (``response_format``) as an llguidance matcher per sequence,
and the batch's allowed-token masks applied to the logits on the device.

``SamplingParams.grammar`` is ``("json_schema", schema JSON)`` (``json_object`` is the schema
``{"type": "object"}``). ``Grammars.constraint`` compiles it when the request is prepared (a schema
the compiler refuses is a 400 naming ``response_format``); each sequence gets its own copy of that
matcher when it is admitted. Each sampling step fills the batch's bitmask on the host in one call
(llguidance's Rust, the constrained rows in parallel threads, into one preallocated buffer: pinned
on CUDA), copies it to the device and masks all the logits there in one op; after each token the engine advances the matcher (``advance``). A finished grammar
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


class MaskBuffer:
    """One preallocated host bitmask (pinned for a CUDA device) for a batch's rows, reused every step.

    ``fill`` writes every row in one call: unconstrained rows allow everything (all bits set), the
    constrained ones are filled by llguidance in parallel threads (``fill_next_token_bitmask_par``);
    ``apply`` copies it to the device (non-blocking) and masks all rows of the logits in one op.
    """

    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        self.vocab = vocab
        self.words = (vocab + 31) // 32
        self.device = device
        cuda = device.type == "cuda"
        self.host = torch.full((rows, self.words), -1, dtype=torch.int32, pin_memory=cuda)
        self.bits = torch.arange(32, device=device, dtype=torch.int32)
        self._copied: Any = None  # the event after the last host->device copy (the buffer is reused)

    def fill(self, seqs: list[Seq]) -> torch.Tensor | None:
        """The batch's bitmask rows on the host (None when no row is constrained)."""
        rows = [(i, s.constraint) for i, s in enumerate(seqs) if s.constraint is not None]
        if not rows:
            return None
        import llguidance.torch as lt

        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copy has left the buffer
        mask = self.host[: len(seqs)]
        mask.fill_(-1)
        if len(rows) == 1:
            lt.fill_next_token_bitmask(rows[0][1].matcher, mask, rows[0][0])
        else:
            lt.fill_next_token_bitmask_par(rows[0][1].executor, [(c.matcher, i) for i, c in rows], mask)
        index = [i for i, _ in rows]
        empty = (~mask[index].any(dim=1)).tolist()  # a matcher in error allows nothing: let it end
        for (i, c), none in zip(rows, empty, strict=True):
            if none:
                for eos in c.eos:
                    bit = 1 << (eos % 32)
                    mask[i, eos // 32] |= bit - (1 << 32) if bit >= 1 << 31 else bit
        return mask

    def apply(self, mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` (float, one row per mask row) with disallowed tokens at minus infinity."""
        n, vocab = scores.shape
        device_mask = mask.to(scores.device, non_blocking=True)
        if scores.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        allowed = ((device_mask[:, :, None] >> self.bits) & 1).bool().reshape(n, self.words * 32)
        return scores.masked_fill(~allowed[:, :vocab], float("-inf"))


_local = threading.local()  # each engine's worker thread has its own buffers


def buffer(rows: int, vocab: int, device: torch.device) -> MaskBuffer:
    """This thread's mask buffer for the device and vocabulary, grown to ``rows`` rows when smaller."""
    buffers: dict[tuple[torch.device, int], MaskBuffer] = _local.__dict__.setdefault("buffers", {})
    key = (device, vocab)
    buf = buffers.get(key)
    if buf is None or buf.host.shape[0] < rows:
        buf = buffers[key] = MaskBuffer(max(rows, 64), vocab, device)
    return buf


def apply(seqs: list[Seq], scores: torch.Tensor) -> torch.Tensor:
    """``scores`` with every constrained row's disallowed tokens at minus infinity (one batched
    fill on the host, one masking op on the device)."""
    if not any(s.constraint is not None for s in seqs):
        return scores
    buf = buffer(len(seqs), scores.shape[-1], scores.device)
    mask = buf.fill(seqs)
    return scores if mask is None else buf.apply(mask, scores)


def apply_serial(seqs: list[Seq], scores: torch.Tensor) -> torch.Tensor:
    """The former path, for the micro-benchmark: one fill per constrained row, one after the other."""
    import llguidance.torch as lt

    rows = [i for i, s in enumerate(seqs) if s.constraint is not None]
    words = (scores.shape[-1] + 31) // 32
    mask = torch.full((len(seqs), words), -1, dtype=torch.int32)
    for i in rows:
        c = seqs[i].constraint
        assert c is not None
        lt.fill_next_token_bitmask(c.matcher, mask, i)
    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((mask[:, :, None] >> bits) & 1).bool().reshape(len(seqs), words * 32)
    return scores.masked_fill(~allowed[:, : scores.shape[-1]].to(scores.device), float("-inf"))


def advance(seq: Seq, token: int) -> None:
    """Feed a sampled token to the sequence's matcher (a token the mask allowed)."""
    c = seq.constraint
    if c is not None and not c.matcher.is_stopped():
        c.matcher.consume_token(token)
