"""Admission: newly admitted requests prefilled (batched, alone, or in chunks) and joined to the batch.

``Admission.admit`` prefills what the worker took off the queue: prompts with equal input shapes
together in one forward pass (``prefill_groups``, up to ``max_prefill_tokens``), a prompt that
begins with cached prefix blocks alone over its uncached rest, and, with chunked prefill
(``prefill_chunk_tokens`` > 0), a longer prompt in chunks: ``advance`` runs one chunk of the oldest
such prompt per engine step, between decode steps, so that the running streams keep getting tokens
while it prefills. A prefilled prompt's first token is delivered as it joins the running batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from omega_server.engine import emit
from omega_server.engine.errors import describe_error, is_fatal
from omega_server.engine.inputs import prefill_groups
from omega_server.engine.prefix_cache import Partial
from omega_server.engine.runner import RawLogprob, Runner
from omega_server.engine.sequence import Seq, release_inputs
from omega_server.engine.types import EngineConfig

log = logging.getLogger(__name__)


class Admission:
    """Prefills for one engine's worker thread; failures go to the engine's one failure path."""

    def __init__(
        self,
        runner: Runner,
        config: EngineConfig,
        fail: Callable[[list[Seq], Exception, str], None],
        deliver: Callable[[Seq, int, RawLogprob | None], None],
    ) -> None:
        self.runner = runner
        self.config = config
        self._fail = fail
        self._deliver = deliver
        self.partial: list[Partial] = []  # chunked prefills under way, oldest first (each holds a slot)

    @property
    def seqs(self) -> list[Seq]:
        """The sequences still prefilling in chunks."""
        return [p.seq for p in self.partial]

    def admit(self, seqs: list[Seq]) -> None:
        """Prefill newly admitted sequences, in batches where the runner can, and join them."""
        runner, limit = self.runner, self.config.max_prefill_tokens
        budget = self.config.prefill_chunk_tokens
        rest: list[Seq] = []
        batched = runner.batch_prefill and limit > 0
        for seq in seqs:
            if runner.chunked(seq, budget):
                self._begin(seq)
            # a prompt with a cached prefix is prefilled alone, over its uncached tokens only
            elif not batched or runner.cached_blocks(seq):
                self.admit_one(seq)
            else:
                rest.append(seq)
        for group in prefill_groups(rest, limit):
            if len(group) == 1:
                self.admit_one(group[0])
                continue
            try:
                for seq in group:
                    emit.start(seq, runner)
                runner.prefill_batch(group)
            except Exception as exc:
                if is_fatal(exc):
                    self._fail(group, exc, "batched prefill")
                # one bad request must not fail the others: prefill them one by one
                ids = {id(s) for s in group}
                runner.evict([i for i, s in enumerate(runner.seqs) if id(s) not in ids])
                log.warning("batched prefill failed (%s); prefilling one by one", describe_error(exc))
                for seq in group:
                    self.admit_one(seq)
                continue
            for seq in group:
                release_inputs(seq)
                self._deliver(seq, seq.last_token, seq.last_logprob)

    def admit_one(self, seq: Seq) -> None:
        """Prefill one sequence alone and join it."""
        try:
            emit.start(seq, self.runner)
            self.runner.prefill(seq)
        except Exception as exc:
            self._fail([seq], exc, "prefill")
            return
        release_inputs(seq)
        self._deliver(seq, seq.last_token, seq.last_logprob)

    def _begin(self, seq: Seq) -> None:
        try:
            emit.start(seq, self.runner)
            self.partial.append(self.runner.begin(seq))
        except Exception as exc:
            self._fail([seq], exc, "prefill")

    def advance(self) -> None:
        """One chunk of the oldest chunked prefill (a cancelled one is dropped); joins it when done."""
        if not self.partial:
            return
        part = self.partial[0]
        seq = part.seq
        if seq.cancelled:
            seq.done = True
            self.partial.pop(0)
            return
        try:
            finished = self.runner.advance(part, self.config.prefill_chunk_tokens)
        except Exception as exc:
            self.partial.pop(0)
            self._fail([seq], exc, "prefill")
            return
        if finished:
            self.partial.pop(0)
            release_inputs(seq)
            self._deliver(seq, seq.last_token, seq.last_logprob)
