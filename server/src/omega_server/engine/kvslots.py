"""A preallocated, slot-based KV cache for batched decoding, with optional CUDA-graph replay.

Each running sequence owns one slot (row) of per-layer key/value buffers of shape
``(slots, kv_heads, width, head_dim)``; its tokens sit at columns ``[0, length)`` and each decode step
writes the new token's key/value at column ``length`` (a different column per row). A 4D additive
mask ``(slots, 1, 1, width)`` opens exactly the written columns, so rows of different lengths need no
padding or re-alignment, and sequences join (their prefill cache is copied in) and leave (rows are
compacted) between steps.

Every tensor a decode step reads or writes has a fixed address, so on CUDA one step can be captured
as a CUDA graph per (batch bucket, width bucket) and replayed: the per-step cost then no longer
depends on Python and kernel-launch overhead. The sdpa and eager backends read the 4D mask; the
flash_attention_2 backend (``flash = True``, ``kernels.flash_decode``) ignores it and reads
``seqlens`` instead: int32 ``cache_seqlens`` (each slot's cached length before the step, a mirror of
``write_pos`` made by ``prepare_step``), and flash-attn writes the new key/value itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def bucket(n: int, cap: int, floor: int = 1) -> int:
    """The smallest power of two >= n (at least ``floor``), capped at ``cap``."""
    size = max(floor, 1)
    while size < n:
        size *= 2
    return min(size, cap)


class SlotCache:
    """The KV buffers plus the per-slot state of one decode step (duck-types transformers' Cache)."""

    def __init__(self, slots: int, width: int, device: torch.device, mrope: bool) -> None:
        self.slots = slots
        self.width = width
        self.device = device
        self.mrope = mrope
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None  # (slots, 1, 1, width) additive
        self.write_pos = torch.zeros(slots, dtype=torch.long, device=device)  # = cached length per slot
        # flash-attn's cache_seqlens: write_pos as int32 at a fixed address (set by prepare_step)
        self.seqlens = torch.zeros(slots, dtype=torch.int32, device=device)
        self.flash = False  # update() hands the new key/value to flash_attn_with_kvcache unwritten
        self.text_pos = torch.zeros(slots, dtype=torch.long, device=device)  # next token's text position
        self.delta = torch.zeros(slots, dtype=torch.long, device=device)  # M-RoPE offset
        self.input_ids = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.position_ids = (
            torch.zeros(3, slots, 1, dtype=torch.long, device=device)
            if mrope
            else torch.zeros(slots, 1, dtype=torch.long, device=device)
        )
        self.rows = torch.arange(slots, device=device)
        self.view = (slots, width)  # the (batch, width) a forward pass currently sees

    @property
    def allocated(self) -> bool:
        return bool(self.keys)

    def allocate(self, layers: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> None:
        """Allocate buffers shaped after a prefill cache's layers (``(1, heads, length, dim)`` each)."""
        for k, v in layers:
            self.keys.append(k.new_zeros((self.slots, k.shape[1], self.width, k.shape[3])))
            self.values.append(v.new_zeros((self.slots, v.shape[1], self.width, v.shape[3])))
        self.mask = torch.full(
            (self.slots, 1, 1, self.width), torch.finfo(dtype).min, dtype=dtype, device=self.device
        )
        self.mask[:, :, :, 0] = 0  # idle rows attend to column 0: finite garbage, never NaN

    def load(
        self,
        slot: int,
        layers: list[tuple[torch.Tensor, torch.Tensor]],
        text_pos: int,
        delta: int,
        token: int = 0,
        length: int | None = None,
    ) -> None:
        """Put a prefilled sequence into ``slot``: row 0 of its cache layers, columns ``[0, length)``.

        ``token`` is the sequence's next input (the token its prefill sampled).
        """
        assert self.mask is not None
        length = layers[0][0].shape[2] if length is None else length
        for i, (k, v) in enumerate(layers):
            self.keys[i][slot, :, :length] = k[0, :, :length]
            self.values[i][slot, :, :length] = v[0, :, :length]
        self.input_ids[slot, 0] = token
        self.mask[slot] = torch.finfo(self.mask.dtype).min
        self.mask[slot, :, :, :length] = 0
        self.write_pos[slot] = length
        self.text_pos[slot] = text_pos
        self.delta[slot] = delta

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot ``src`` (``length`` cached tokens) into slot ``dst`` (compaction)."""
        assert self.mask is not None
        for buf in (*self.keys, *self.values):
            buf[dst, :, :length] = buf[src, :, :length]
        self.mask[dst] = self.mask[src]
        for t in (self.write_pos, self.text_pos, self.delta, self.input_ids):
            t[dst] = t[src]

    def reset(self, slot: int) -> None:
        """Mark a slot idle."""
        assert self.mask is not None
        self.mask[slot] = torch.finfo(self.mask.dtype).min
        self.mask[slot, :, :, 0] = 0
        self.write_pos[slot] = 0
        self.text_pos[slot] = 0
        self.delta[slot] = 0
        self.input_ids[slot] = 0

    def prepare_step(self, n: int) -> None:
        """Inputs of one decode step for the first ``n`` slots (outside any graph), all on the device.

        The input tokens are already in ``input_ids`` (``set_tokens`` / ``load``), so a step can be
        queued before the host has seen the previous step's tokens.
        """
        assert self.mask is not None
        rows = self.rows[:n]
        self.mask[rows, 0, 0, self.write_pos[:n]] = 0  # the new token attends to itself
        self.seqlens.copy_(self.write_pos)  # idle rows: 0 (their garbage goes to column 0)
        pos = self.text_pos + self.delta
        if self.mrope:
            self.position_ids[:, :, 0] = pos
        else:
            self.position_ids[:, 0] = pos

    def set_tokens(self, n: int, tokens: torch.Tensor) -> None:
        """Feed a step's sampled tokens (on the device) to the next step of the first ``n`` slots."""
        self.input_ids[:n, 0] = tokens

    def finish_step(self, n: int) -> None:
        self.write_pos[:n] += 1
        self.text_pos[:n] += 1

    # -- the transformers Cache surface used by the models' decoder layers

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # the batch from the states (a symbolic size under torch.compile's dynamic batch); the width
        # from the view (fixed when compiled)
        if self.flash:  # flash_attn_with_kvcache writes them at column seqlens[row]
            return key_states, value_states
        b, w = key_states.shape[0], self.view[1]
        rows, cols = self.rows[:b], self.write_pos[:b]
        self.keys[layer_idx][rows, :, cols] = key_states[:, :, 0]
        self.values[layer_idx][rows, :, cols] = value_states[:, :, 0]
        return self.keys[layer_idx][:b, :, :w], self.values[layer_idx][:b, :, :w]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.view[1] - 1

    def __len__(self) -> int:
        return len(self.keys)


class GraphRunner:
    """Runs a decode step for a (batch, width) bucket eagerly or through a captured CUDA graph."""

    def __init__(self, forward: Callable[[int, int], torch.Tensor], use_graphs: bool) -> None:
        self.forward = forward  # (batch, width) -> logits (batch, vocab), reading the SlotCache buffers
        self.use_graphs = use_graphs
        self.graphs: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}
        self.pool: Any = None
        self.error: str | None = None

    def prepare(self, batch: int, width: int) -> None:
        """Make the step for ``(batch, width)`` ready ahead of use: capture its graph (which warms it
        up, and so compiles a compiled step, first), or without graphs run it once."""
        if not self.use_graphs:
            self.forward(batch, width)
        elif (batch, width) not in self.graphs:
            self.run(batch, width)

    def run(self, batch: int, width: int) -> torch.Tensor:
        if not self.use_graphs:
            return self.forward(batch, width)
        key = (batch, width)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(batch, width)
            except Exception as exc:  # data-dependent control flow (e.g. some MoE paths): stay eager
                self.use_graphs = False
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                log.warning("CUDA graph capture failed, decoding without graphs: %s", self.error)
                torch.cuda.synchronize()
                return self.forward(batch, width)
        graph, logits = self.graphs[key]
        graph.replay()
        return logits

    def _capture(self, batch: int, width: int) -> tuple[Any, torch.Tensor]:
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up runs outside the graph (allocator, lazy inits)
            for _ in range(2):
                self.forward(batch, width)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (HTTP, metrics) may touch CUDA while this one captures
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            logits = self.forward(batch, width)
        log.info("captured a CUDA graph for decode batch %d width %d", batch, width)
        return graph, logits
