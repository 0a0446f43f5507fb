"""The dynamic-cache runner: prefill, batched decode and sampling over transformers' DynamicCache.

Each request is prefilled alone (its images and exact prompt); its cache rows then join the running
batch, left-padded to the batch's length, and leave between decode steps. Any attention backend.
``Runner`` is also the base of ``static_runner.StaticRunner``: both count passes the same way and
share the prefill bookkeeping (``_prefill_pass``, ``_rope_deltas``, ``_join``). Used only from one thread at a time.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import torch

from omega_server.engine import sampler
from omega_server.engine.inputs import without_full_mask
from omega_server.engine.prefix_cache import Partial
from omega_server.engine.sequence import Seq
from omega_server.engine.types import EngineStats

#: a sampled token's log-probability and its top alternatives' (token id, log-probability)
RawLogprob = tuple[float, tuple[tuple[int, float], ...]]

#: what a log-probability of minus infinity is sent as (OpenAI's; JSON has no infinity)
MIN_LOGPROB = -9999.0


def host_logprobs(
    n: int, rows: list[int], values: torch.Tensor | None, ids: torch.Tensor | None
) -> list[RawLogprob | None]:
    """Per row, its ``RawLogprob`` (rows that asked) or None, from ``sampler.Sampled``'s tensors on the host."""
    out: list[RawLogprob | None] = [None] * n
    if values is None:
        return out
    vals = values.clamp(min=MIN_LOGPROB).tolist()
    top_ids = ids.tolist() if ids is not None else [[] for _ in rows]
    for j, row in enumerate(rows):
        if row < n:
            out[row] = (vals[j][0], tuple(zip(top_ids[j], vals[j][1:], strict=True)))
    return out


class Pending:
    """A decode step in flight: its sequences (in row order) and where its tokens will land on the host.

    Rows that asked for log-probabilities have theirs copied next to the tokens (``logprobs``).
    """

    def __init__(
        self,
        seqs: list[Seq],
        *,
        tokens: list[int] | None = None,
        host: torch.Tensor | None = None,
        event: Any = None,
        logprobs: list[RawLogprob | None] | None = None,
        logprob_host: tuple[list[int], torch.Tensor | None, torch.Tensor | None] | None = None,
    ) -> None:
        self.seqs = seqs
        self._tokens = tokens
        self._host = host
        self._event = event
        self._logprobs = logprobs
        self._logprob_host = logprob_host

    def wait(self) -> list[int]:
        """The step's tokens, in row order (waits only for this step, not for later queued ones)."""
        if self._tokens is None:
            assert self._host is not None
            if self._event is not None:
                self._event.synchronize()
            self._tokens = self._host[: len(self.seqs)].tolist()
        return self._tokens

    def logprobs(self) -> list[RawLogprob | None]:
        """Each row's log-probabilities (None for rows that did not ask); after ``wait``."""
        if self._logprobs is None:
            self.wait()
            rows, values, ids = self._logprob_host or ([], None, None)
            self._logprobs = host_logprobs(len(self.seqs), rows, values, ids)
        return self._logprobs


class Runner:
    """Prefill, batched decode and sampling on one model, over a DynamicCache."""

    batch_prefill = False  # prefill_batch() exists (the static slot cache)
    pipelined = False  # launch() returns a step already read back

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.device = model.get_input_embeddings().weight.device
        self.mrope = hasattr(getattr(model, "model", None), "rope_deltas")
        params = inspect.signature(model.forward).parameters
        self.logits_to_keep = "logits_to_keep" in params
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        # flash_attention_2 prefills without an all-ones padding mask (``inputs.without_full_mask``)
        self.flash_prefill = str(getattr(model.config, "_attn_implementation", "")) == "flash_attention_2"
        self.eos_ids = self._eos_ids()
        # the running batch
        self.seqs: list[Seq] = []
        self.cache: Any = None
        self.observer: Callable[[int], None] | None = None
        self.stats: EngineStats | None = None

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if value is None:
                continue
            ids.update([value] if isinstance(value, int) else list(value))
        return ids

    # -- forward passes and their counters

    def _forward(self, batch: int, keep: int | torch.Tensor = 1, **kwargs: Any) -> Any:
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = keep
        out = self.model(**kwargs, use_cache=True, return_dict=True)
        if self.stats is not None:
            self.stats.forward_passes += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, batch)
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer(batch)
        return out

    def _count_decode(self, n: int) -> None:
        if self.stats is not None:
            self.stats.decode_passes += 1
            if n > 1:
                for s in self.seqs:
                    if not s.batched:
                        s.batched = True
                        self.stats.requests_batched_total += 1

    def _count_pass(self, n: int) -> None:
        """Count a decode pass that did not go through ``_forward`` (graph replay)."""
        if self.stats is not None:
            self.stats.forward_passes += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, n)
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer(n)
        self._count_decode(n)

    # -- prefill

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                out[key] = value.to(self.model.dtype)
        return out

    def _prefill_pass(
        self, rows: int, inputs: dict[str, Any], keep: int | torch.Tensor = 1
    ) -> tuple[Any, Any]:
        """One prefill forward pass of ``rows`` prompts (inputs on the device): its output and cache.

        Then ``_rope_deltas`` (after any other use of the logits, which it waits for) and ``_join``.
        """
        if self.mrope:
            self.model.model.rope_deltas = None  # computed afresh from these prompts' images
        out = self._forward(rows, keep=keep, **inputs)
        if self.stats is not None:
            self.stats.prefill_passes += 1
            self.stats.prefill_tokens += int(inputs["input_ids"].numel())
        return out, getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    def _rope_deltas(self, rows: int) -> list[int]:
        """Each row's M-RoPE offset from the last prefill pass (0 for other models); reads the device."""
        deltas = [0] * rows
        if self.mrope:
            rope = self.model.model.rope_deltas
            if rope is not None:
                deltas = [int(d) for d in rope.reshape(rows, -1)[:, 0].tolist()]
            self.model.model.rope_deltas = None
        return deltas

    def _sample(self, seqs: list[Seq], logits: torch.Tensor) -> tuple[list[int], list[RawLogprob | None]]:
        """Sample one token per row and read them (and the asked-for log-probabilities) back."""
        out = sampler.sample_full(seqs, logits)
        tokens: list[int] = out.tokens.tolist()
        return tokens, host_logprobs(len(seqs), out.logprob_rows, out.logprobs, out.top_ids)

    def _join(
        self,
        seqs: list[Seq],
        lengths: list[int],
        deltas: list[int],
        sampled: tuple[list[int], list[RawLogprob | None]],
        cache: Any,
    ) -> None:
        """Record each prefilled sequence's position and first token, and add it to the batch."""
        tokens, logprobs = sampled
        for row, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
            seq.cache_len = seq.next_pos = n
            seq.rope_delta = deltas[row]
            seq.last_token = tokens[row]
            seq.last_logprob = logprobs[row]
            self._merge(seq, cache, row)

    def prefill(self, seq: Seq) -> None:
        """Run the prompt (with its images) alone, sample the first token, and join the batch."""
        inputs = seq.prepared.inputs
        inputs = self._to_device(without_full_mask(inputs) if self.flash_prefill else inputs)
        out, cache = self._prefill_pass(1, inputs)
        deltas = self._rope_deltas(1)
        sampled = self._sample([seq], out.logits[:, -1, :])
        self._join([seq], [int(inputs["input_ids"].shape[1])], deltas, sampled, cache)

    def prefill_batch(self, seqs: list[Seq]) -> None:
        """Prefill several sequences in one forward pass (see ``StaticRunner``)."""
        raise NotImplementedError

    def prompt_key(self, inputs: dict[str, torch.Tensor]) -> Any:
        """Prefix caching's key for a prompt (``StaticRunner``); None: not cached."""
        return None

    def cached_blocks(self, seq: Seq) -> int:
        """Leading prompt blocks in the prefix cache (``StaticRunner``); always 0 here."""
        return 0

    def chunked(self, seq: Seq, budget: int) -> bool:
        """Prefill ``seq`` in chunks between decode steps (``StaticRunner``); never here."""
        return False

    def begin(self, seq: Seq) -> Partial:
        """A resumable prefill (``StaticRunner``)."""
        raise NotImplementedError

    def advance(self, part: Partial, budget: int = 0) -> bool:
        """The next chunk of a resumable prefill (``StaticRunner``)."""
        raise NotImplementedError

    def _merge(self, seq: Seq, cache: Any, row: int) -> None:
        """Append a prefilled sequence's cache rows to the batch cache, left-padding the shorter side."""
        if self.cache is None or not self.seqs:
            self.cache = cache
            self.seqs = [seq]
            return
        batch_len = self.cache.get_seq_length()
        new_len = cache.get_seq_length()
        width = max(batch_len, new_len)
        for layer, new in zip(self.cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat([_left_pad(layer.keys, width), _left_pad(new.keys, width)], dim=0)
            layer.values = torch.cat([_left_pad(layer.values, width), _left_pad(new.values, width)], dim=0)
        self.seqs.append(seq)

    # -- the running batch

    def evict(self, keep: list[int]) -> None:
        """Keep only the batch rows in ``keep`` and drop padding columns no row needs."""
        if not keep:
            self.seqs = []
            self.cache = None
            return
        if len(keep) == len(self.seqs):
            return
        width = self.cache.get_seq_length()
        kept = [self.seqs[i] for i in keep]
        trim = width - max(s.cache_len for s in kept)
        index = torch.tensor(keep)
        on_device: dict[torch.device, torch.Tensor] = {}  # layers may sit on several GPUs (device_map)
        for layer in self.cache.layers:
            device = layer.keys.device
            if device not in on_device:
                on_device[device] = index.to(device)
            layer.keys = layer.keys.index_select(0, on_device[device])[:, :, trim:, :]
            layer.values = layer.values.index_select(0, on_device[device])[:, :, trim:, :]
        self.seqs = kept

    def decode(self) -> list[int]:
        """One forward pass for every running sequence; returns the sampled tokens, in batch order."""
        seqs = self.seqs
        n = len(seqs)
        width = self.cache.get_seq_length()
        dev = self.device
        input_ids = torch.tensor([[s.last_token] for s in seqs], dtype=torch.long, device=dev)
        lengths = torch.tensor([s.cache_len for s in seqs], dtype=torch.long, device=dev)
        cols = torch.arange(width + 1, device=dev)
        mask = (cols[None, :] >= (width - lengths)[:, None]).long()
        pos = torch.tensor([[s.next_pos] for s in seqs], dtype=torch.long, device=dev)
        if self.mrope:
            delta = torch.tensor([[s.rope_delta] for s in seqs], dtype=torch.long, device=dev)
            position_ids = (pos + delta)[None].expand(3, n, 1)
        else:
            position_ids = pos
        kwargs = {self.cache_kw: self.cache}
        out = self._forward(n, input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs)
        self._count_decode(n)
        for s in seqs:
            s.cache_len += 1
            s.next_pos += 1
        tokens, logprobs = self._sample(seqs, out.logits[:, -1, :])
        for s, t, lp in zip(seqs, tokens, logprobs, strict=True):
            s.last_token = t
            s.last_logprob = lp
        return tokens

    def launch(self) -> Pending:
        """Queue one decode step for every running sequence; ``wait()`` on the result gives its tokens."""
        seqs = list(self.seqs)
        tokens = self.decode()
        return Pending(seqs, tokens=tokens, logprobs=[s.last_logprob for s in seqs])


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[-2]
    if missing <= 0:
        return t
    pad = t.new_zeros((*t.shape[:-2], missing, t.shape[-1]))
    return torch.cat([pad, t], dim=-2)
