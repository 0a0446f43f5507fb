"""The engine: a bounded queue, admission into the running batch, the decode loop, failures, death.

``Engine.load(config)`` (``load.load_engine``) loads model + processor, picks the attention backend
and warms up. ``prepare()`` turns a chat into model inputs (validation errors are typed),
``stream()`` queues it and yields ``StepOutput`` deltas.

How generation runs: one worker thread owns the model. Waiting requests are prefilled (their images
and exact prompts; ``engine.admission``: batched, from cached prefix blocks, or in chunks between
decode steps) and then join the running batch between decode steps. Every decode step is one
forward pass for all running sequences (up to ``max_batch_size``), each with its own sampling
parameters, seed, stop strings and token budget; sampling runs on the device for the whole batch.
Finished or cancelled sequences leave between steps. Greedy outputs equal ``model.generate()``'s.

On the static cache several waiting requests are prefilled in one forward pass (right-padded, up to
``max_prefill_tokens``), and decode steps are pipelined one deep: step k+1 is queued on the device,
its input tokens fed from step k's sampling there, before the host reads step k's tokens (one
non-blocking copy into pinned memory) and streams them. With constrained rows (structured output)
the step is split: step k+1's forward is queued, step k's tokens are read and advance the grammars,
then the masks are filled and step k+1 is sampled (``_constrained_step``). On the dynamic cache each request is
prefilled alone and its cache rows are left-padded to the batch's length.

A failed forward pass takes one path (``_fail``): count it, evict the rows, and either fail those
requests (the engine keeps serving) or, after a device error, fail them and stop the engine.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import torch

from omega_server import models
from omega_server.engine import emit, grammar
from omega_server.engine.admission import Admission
from omega_server.engine.errors import (
    EngineDeadError,
    EngineError,
    OutOfMemoryError,
    QueueFullError,
    describe_error,
    is_fatal,
)
from omega_server.engine.inputs import (
    ProcessorPool,
    check_request,
    check_token_ids,
    prepare_inputs,
)
from omega_server.engine.load import load_engine, start_runner, vocab_size
from omega_server.engine.runner import Pending, RawLogprob
from omega_server.engine.sequence import Seq
from omega_server.engine.static_runner import StaticRunner
from omega_server.engine.types import (
    EngineConfig,
    EngineInfo,
    EngineStats,
    GenerationRequest,
    PreparedRequest,
    StepOutput,
)

log = logging.getLogger(__name__)


class Engine:
    """A loaded model serving generation requests; see the module docstring.

    Public surface: ``load``, ``info``, ``prepare``, ``stream``, ``generate_sync``, ``stats``,
    ``batch_observer``, ``alive``, ``shutdown``. Thread-safe; ``stream`` must be iterated on an
    asyncio event loop.
    """

    def __init__(self, config: EngineConfig, loaded: models.LoadedModel, info: EngineInfo) -> None:
        self.config = config
        self.info = info
        self.stats = EngineStats()
        self.batch_observer: Callable[[int], None] | None = None
        self.alive = True
        self._loaded = loaded
        self._processor = loaded.processor
        self.vocab_size = vocab_size(loaded.model)
        # preprocessing: one processor copy per concurrent call (tokenizers are not thread-safe)
        self._prep_pool = ProcessorPool(loaded.processor, config.preprocess_workers)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Seq] = collections.deque()
        self._stopping = False
        self._dead_reason = ""
        self._admitted: list[Seq] = []  # taken off the queue, not yet prefilled (a crash tells them too)
        self._busy = False  # the worker has work (it is not waiting for requests)
        self._beat = time.monotonic()  # when the worker last made progress (``stalled_seconds``)
        self._runner = start_runner(config, loaded, info)
        self._max_running = info.kv_slots or config.max_batch_size  # fewer when the KV slots are fewer
        self._pending: Pending | None = None  # the decode step queued on the device, not yet read
        self._runner.stats = self.stats
        self._grammars = grammar.Grammars(self._runner.tokenizer, self.vocab_size, self._runner.eos_ids)
        self._runner.observer = self._observe
        self._admission = Admission(self._runner, config, self._fail, self._deliver)
        self._thread = threading.Thread(target=self._work, name="omega-engine", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, config: EngineConfig) -> Engine:
        """Load model + processor, choose attention (flash -> sdpa fallback), warm up with an image."""
        return load_engine(config)

    # -- requests

    def prepare(self, req: GenerationRequest) -> PreparedRequest:
        """Apply the chat template and the processor. Raises InvalidRequestError / PromptTooLongError."""
        images = check_request(req, self.config.max_images_per_request)
        check_token_ids(req.params, self.vocab_size)
        grammar = req.params.grammar
        constraint = self._grammars.constraint(grammar) if grammar is not None else None
        with self._prep_pool.borrow() as processor:
            prepared = prepare_inputs(processor, req, images, max_model_length=self.config.max_model_length)
        prepared.constraint = constraint
        prepared.prefix_key = self._runner.prompt_key(prepared.inputs)
        return prepared

    async def stream(self, prepared: PreparedRequest) -> AsyncGenerator[StepOutput, None]:
        """Queue the request and yield its deltas; the last has ``finished=True``.

        Raises QueueFullError (at the first iteration) when the queue is full, EngineDeadError when the
        engine stopped. Closing or cancelling the iterator cancels the generation.
        """
        if not self.alive:
            raise EngineDeadError(self._dead_message())
        queue: asyncio.Queue[Any] = asyncio.Queue()
        seq = Seq(prepared=prepared, loop=asyncio.get_running_loop(), queue=queue)
        self._submit(seq)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if not seq.done:
                self._cancel(seq)

    def _submit(self, seq: Seq) -> None:
        with self._cond:
            if not self.alive:
                raise EngineDeadError(self._dead_message())
            if len(self._waiting) >= self.config.max_queue:
                raise QueueFullError(
                    f"the server is busy: {len(self._waiting)} requests are queued (MAX_QUEUE={self.config.max_queue})",
                    retry_after=1.0,
                )
            self._waiting.append(seq)
            self.stats.requests_total += 1
            self.stats.queue_depth = len(self._waiting)
            self._cond.notify_all()

    def generate_sync(self, prepared: PreparedRequest, timeout: float | None = None) -> list[StepOutput]:
        """Run one request to completion from a plain thread (tests, tools); returns all its deltas."""
        items: list[Any] = []
        done = threading.Event()

        def emit(item: Any) -> None:
            items.append(item)
            if isinstance(item, BaseException) or item.finished:
                done.set()

        seq = Seq(prepared=prepared, loop=None, queue=None, emit=emit)
        self._submit(seq)
        if not done.wait(timeout):
            self._cancel(seq)
            raise TimeoutError("generation did not finish in time")
        if isinstance(items[-1], BaseException):
            raise items[-1]
        return items

    def _cancel(self, seq: Seq) -> None:
        """Cancel a request: a queued one leaves the queue now (admission and queue depth see it
        gone); a running one is evicted by the worker between steps."""
        with self._cond:
            seq.cancelled = True
            for i, queued in enumerate(self._waiting):
                if queued is seq:  # by identity: a Seq's fields hold tensors
                    del self._waiting[i]
                    seq.done = True
                    self.stats.queue_depth = len(self._waiting)
                    break
            self._cond.notify_all()

    def shutdown(self) -> None:
        """Stop the worker; queued and running requests end with EngineDeadError."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self._die("the engine was shut down")

    def stalled_seconds(self) -> float:
        """Seconds since the worker last made progress while it has work; 0 when it is idle.

        /live turns 503 past ``WORKER_STALL_SECONDS``: a worker stuck in a step never comes back.
        """
        return time.monotonic() - self._beat if self._busy and self.alive else 0.0

    # -- worker

    def _observe(self, n: int) -> None:
        if self.batch_observer is not None:
            self.batch_observer(n)

    def _dead_message(self) -> str:
        return f"the engine is not running: {self._dead_reason or 'stopped'}"

    def _die(self, reason: str) -> None:
        with self._cond:
            if self.alive:
                self.alive = False
                self._dead_reason = reason
            pending = list(self._waiting)
            self._waiting.clear()
            self.stats.queue_depth = 0
        err = EngineDeadError(self._dead_message())
        for seq in pending + self._admitted + self._admission.seqs + self._runner.seqs:
            if not seq.done:
                seq.done = True
                seq.send(err)
        self._runner.evict([])
        self._admission.partial.clear()
        self.stats.running = self.stats.kv_tokens = 0

    def _work(self) -> None:
        runner = self._runner
        try:
            with torch.inference_mode():
                while True:
                    admitted: list[Seq] = []
                    with self._cond:
                        while (
                            not self._stopping
                            and not self._waiting
                            and not runner.seqs
                            and self._pending is None
                            and not self._admission.partial
                        ):
                            self._busy = False
                            self._cond.wait()
                        self._busy, self._beat = True, time.monotonic()
                        if self._stopping:
                            return
                        free = self._max_running - len(runner.seqs) - len(self._admission.partial)
                        while free > 0 and self._waiting:
                            seq = self._waiting.popleft()
                            if seq.cancelled:
                                seq.done = True
                                continue
                            admitted.append(seq)
                            free -= 1
                        self.stats.queue_depth = len(self._waiting)
                        self._admitted = admitted
                    self._admission.admit(admitted)
                    self._admitted = []
                    self._admission.advance()  # chunked prefill: one chunk per step
                    self._drop_finished()
                    if runner.seqs or self._pending is not None:
                        self._step()
                    self.stats.running = len(runner.seqs)
                    self.stats.kv_tokens = sum(s.cache_len for s in runner.seqs)
                    self._beat = time.monotonic()
        except Exception as exc:  # a bug or an unrecoverable device error: fail everything, loudly
            log.exception("engine worker crashed")
            self._die(f"worker crashed: {describe_error(exc)}")

    def _fail(self, seqs: list[Seq], exc: Exception, what: str, evict: bool = True) -> None:
        """The one failure path: count it, evict ``seqs``' rows, end their requests, re-raise if fatal.

        After a device error (``is_fatal``) the requests get EngineDeadError and the exception goes on
        to stop the engine; after an out-of-memory error they get ``OutOfMemoryError`` (HTTP 503 with
        Retry-After), the allocator's cache is emptied, and the engine goes on; otherwise they get a
        ``generation_failed`` error and the engine goes on.
        """
        self.stats.errors_total += 1
        failed = {id(s) for s in seqs}
        if evict:
            self._runner.evict([i for i, s in enumerate(self._runner.seqs) if id(s) not in failed])
        fatal = is_fatal(exc)
        if fatal:
            err: EngineError = EngineDeadError(f"device error: {describe_error(exc)}")
        elif isinstance(exc, torch.OutOfMemoryError):
            log.warning("%s ran out of device memory: %s", what, describe_error(exc))
            err = OutOfMemoryError(
                f"out of device memory during the {what}; retry later or send a smaller request",
                retry_after=2.0,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        else:
            log.warning("%s failed: %s", what, describe_error(exc))
            err = EngineError(f"generation failed: {describe_error(exc)}", code="generation_failed")
        for seq in seqs:
            seq.done = True
            seq.send(err)
        if fatal:
            raise exc

    def _step(self) -> None:
        """One decode step, pipelined one deep on runners that can (the static slot cache).

        The next step is queued on the device first; then the host reads the previous step's tokens
        (one device->host copy) and does its bookkeeping (detokenization, stop checks, streaming)
        while the device runs the queued step. A sequence that finished at step k still has a row in
        step k+1: that token is dropped, and the row is freed before step k+2.
        """
        runner = self._runner
        # constrained rows: their masks are filled between the forward and the sampling (the dynamic
        # runner reads every step at once and masks inside it)
        if runner.pipelined and any(s.constraint is not None for s in runner.seqs):
            self._constrained_step()
            return
        pending, self._pending = self._pending, None
        try:
            launched = runner.launch() if runner.seqs else None
            if not runner.pipelined:
                pending, launched = launched, None
            tokens = pending.wait() if pending is not None else []
        except Exception as exc:
            self._fail(list(runner.seqs), exc, "decode step")
            return
        self._pending = launched
        if pending is not None:
            self._take(pending, tokens)
        self._drop_finished()

    def _constrained_step(self) -> None:
        """A pipelined step with constrained rows: queue step k+1's forward, read step k's tokens and
        advance the matchers with them while the device computes, then fill the masks (one batched
        call) and queue step k+1's sampling. Rows are evicted only after that (a row failed while
        its token is delivered is dropped with the finished ones)."""
        runner = self._runner
        assert isinstance(runner, StaticRunner)
        pending, self._pending = self._pending, None
        try:
            step = runner.forward_step()
            tokens = pending.wait() if pending is not None else []
        except Exception as exc:
            self._fail(list(runner.seqs), exc, "decode step")
            return
        if pending is not None:
            self._take(pending, tokens, evict=False)
        try:
            self._pending = runner.sample_step(step)
        except Exception as exc:
            self._fail(list(runner.seqs), exc, "decode step")
            return
        self._drop_finished()

    def _take(self, pending: Pending, tokens: list[int], evict: bool = True) -> None:
        """A read step's tokens, each to its sequence (a row that finished meanwhile drops its token)."""
        logprobs = pending.logprobs()
        for s, t, lp in zip(pending.seqs, tokens, logprobs, strict=True):
            if not (s.done or s.cancelled):
                self._deliver(s, t, lp, evict)

    def _drop_finished(self) -> None:
        runner = self._runner
        keep = [i for i, s in enumerate(runner.seqs) if not (s.done or s.cancelled)]
        for s in runner.seqs:
            if s.cancelled:
                s.done = True
        runner.evict(keep)

    def _deliver(self, seq: Seq, token: int, logprob: RawLogprob | None = None, evict: bool = True) -> None:
        """``emit.deliver``; an error there (detokenizer, stop checks, grammar) fails this request only
        (its row is evicted now, or with ``evict=False`` by the next ``_drop_finished``)."""
        self.stats.completion_tokens_total += 1
        try:
            emit.deliver(seq, token, logprob, self._runner.tokenizer)
        except Exception as exc:
            self._fail([seq], exc, "detokenization", evict)
