"""One request in flight (``Seq``): its cache position, sampler state, text, and the way back to its caller.

``release_inputs`` drops its model inputs (the pixel values) once it is prefilled.

The worker thread owns a ``Seq`` once it is admitted; ``send`` hands each output (or the error that
ends it) to the caller: to its asyncio queue, thread-safely, or to a plain callback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omega_server.engine.types import PreparedRequest

if TYPE_CHECKING:
    import torch

    from omega_server.engine.detok import IncrementalText
    from omega_server.engine.grammar import Constraint


@dataclass
class Seq:
    """One request in flight (owned by the worker thread once admitted)."""

    prepared: PreparedRequest
    loop: asyncio.AbstractEventLoop | None
    queue: asyncio.Queue[Any] | None
    emit: Callable[[Any], None] | None = None  # for callers without an event loop (warm-up, tests)
    cancelled: bool = False
    done: bool = False
    generator: torch.Generator | None = None  # made at admission, for a seeded request only
    # penalized requests only (``sampler``): output token counts and the prompt's tokens, on the device
    counts: torch.Tensor | None = None
    prompt_seen: torch.Tensor | None = None
    constraint: Constraint | None = None  # structured output: made at admission (``engine.grammar``)
    text: IncrementalText | None = None  # made at admission
    cache_len: int = 0  # real (unpadded) tokens in this sequence's KV cache
    next_pos: int = 0  # text position of the next token fed
    rope_delta: int = 0  # M-RoPE offset (Qwen-VL); 0 elsewhere
    last_token: int = 0
    last_logprob: tuple[float, tuple[tuple[int, float], ...]] | None = None  # runner.RawLogprob
    batched: bool = False

    def send(self, item: Any) -> None:
        """Deliver an output or an error to whoever waits for this request."""
        if self.emit is not None:
            self.emit(item)
        elif self.loop is not None and self.queue is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def release_inputs(seq: Seq) -> None:
    """Drop a prefilled request's model inputs but its token ids: the pixel values (about 300 MB of
    float32 for a 12 MP image at the processor's own limit) are not kept while it decodes."""
    inputs = seq.prepared.inputs
    seq.prepared.inputs = {"input_ids": inputs["input_ids"]} if "input_ids" in inputs else {}
