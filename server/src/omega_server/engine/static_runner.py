"""The static-cache runner: decoding over preallocated slots, CUDA graphs, torch.compile, pipelining.

Prefill is the dynamic runner's (one sequence, or several right-padded in one pass:
``prefill_batch``); each prefilled cache is then copied into a free slot of the ``kvslots.SlotCache``.
A decode step reads and writes only fixed buffers, so on a GPU it is replayed as a CUDA graph per
(batch, width) bucket (``kvslots.GraphRunner``), and it can be queued before the previous step's
tokens are read (``launch`` / ``Pending.wait``). For sdpa and eager (the step passes the slot cache's
4D mask) and flash_attention_2 (the step's attention runs ``flash_attn_with_kvcache`` on the slots
over ``cache_seqlens``: ``kernels.flash_decode``), on one device.

A prompt can also be prefilled in parts (``begin`` then ``advance``, over a transformers
DynamicCache, at the positions the whole prompt's pass gives them): with prefix caching (``prefix``,
a ``prefix_cache.PrefixCache``) a prompt whose leading blocks are cached starts from those blocks'
keys and values and computes only the rest (``prefill``); with chunked prefill the engine advances a
long prompt one chunk per step. Every prefilled prompt's blocks are kept (``_merge``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from omega_server.engine import kvslots, prefix_cache, sampler
from omega_server.engine.inputs import TOKEN_KEYS, collate, without_full_mask
from omega_server.engine.runner import Pending, Runner
from omega_server.engine.sequence import Seq
from omega_server.kernels import flash_decode

log = logging.getLogger(__name__)


class StaticRunner(Runner):
    """Decoding over a preallocated slot cache (``kvslots``), replayed as CUDA graphs on a GPU."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        slots: int,
        width: int,
        graphs: bool,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, processor)
        self.width = width
        self.slot_cache = kvslots.SlotCache(slots, width, self.device, self.mrope)
        # flash_attention_2: decode attention through flash_attn_with_kvcache on the slots
        self.flash = str(getattr(model.config, "_attn_implementation", "")) == flash_decode.BACKEND
        self.slot_cache.flash = self.flash  # (kernels.install registers flash_decode for this backend)
        self.graphs = kvslots.GraphRunner(self._static_forward, graphs and self.device.type == "cuda")
        # the model call of one decode step; torch.compile'd when asked (the slicing and the slot
        # cache's view stay outside, so the compiled code sees tensors and one fixed width)
        self.compiled = compile_options is not None
        self._step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = self._model_step
        if compile_options is not None:
            import torch._dynamo as dynamo

            # one graph per batch shape (and none per width); the default limit of 8 is too low
            limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), 64))
            self._step = torch.compile(self._model_step, fullgraph=False, **compile_options)
        cuda = self.device.type == "cuda"
        # two host buffers: step k+1's tokens are copied while the host still reads step k's
        self._host = [torch.zeros(slots, dtype=torch.long, pin_memory=cuda) for _ in range(2)]
        self._flip = 0
        self.prefix: prefix_cache.PrefixCache | None = None  # set by ``load`` (ENABLE_PREFIX_CACHING)
        self._media_ids = prefix_cache.image_token_ids(model.config)

    batch_prefill = True
    pipelined = True

    def _static_forward(self, batch: int, width: int) -> torch.Tensor:
        sc = self.slot_cache
        assert sc.mask is not None
        sc.view = (batch, width)
        position_ids = sc.position_ids[:, :batch] if self.mrope else sc.position_ids[:batch]
        if self.compiled:  # (3, slots, 1)[:, :batch] is contiguous only at batch == slots: always a
            # fresh contiguous copy (not a view at one batch only), or that batch compiles again
            position_ids = position_ids.clone(memory_format=torch.contiguous_format)
        # flash ignores the mask (a 4D one passes transformers' mask code untouched); it reads seqlens
        mask = sc.mask[:batch, :, :, :width]
        if not self.flash:
            return self._step(sc.input_ids[:batch], mask, position_ids)
        with flash_decode.slot_decode(sc):
            return self._step(sc.input_ids[:batch], mask, position_ids)

    def _model_step(
        self, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {self.cache_kw: self.slot_cache}
        if self.logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            return_dict=True,
            **kwargs,
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def precompile(self) -> None:
        """Compile (and on a GPU capture) the decode step for every batch bucket now.

        Idle slots attend to column 0 only, so these passes write garbage nowhere a sequence reads.
        """
        sc = self.slot_cache
        batches = sorted({kvslots.bucket(n, sc.slots) for n in range(1, sc.slots + 1)})
        if not self.graphs.use_graphs:
            batches = [1, *([2] if sc.slots > 1 else [])]  # eager: batch 1, then the dynamic shape
        for batch in batches:
            one = time.perf_counter()
            self.graphs.prepare(batch, self.width)
            log.info("decode step compiled for batch %d in %.1f s", batch, time.perf_counter() - one)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _merge(self, seq: Seq, cache: Any, row: int) -> None:
        layers = [(layer.keys[row : row + 1], layer.values[row : row + 1]) for layer in cache.layers]
        sc = self.slot_cache
        if not sc.allocated:
            sc.allocate(layers, self.model.dtype)
        sc.load(len(self.seqs), layers, seq.next_pos, seq.rope_delta, seq.last_token, seq.cache_len)
        self.seqs.append(seq)
        key = seq.prepared.prefix_key
        if self.prefix is not None and isinstance(key, prefix_cache.PromptKey):
            try:
                self.prefix.insert(key, layers)
            except torch.OutOfMemoryError:  # the store gives its memory back; the request goes on
                log.warning(
                    "the prefix cache ran out of device memory; emptied (%d blocks)", len(self.prefix)
                )
                self.prefix.clear()
            if self.stats is not None:
                self.stats.prefix_cache_queries += 1

    # -- prefix caching

    def prompt_key(self, inputs: dict[str, torch.Tensor]) -> prefix_cache.PromptKey | None:
        """The prompt's block hashes when prefix caching is on and can serve this prompt."""
        if self.prefix is None or not self.resumable(inputs):
            return None
        return prefix_cache.prompt_key(inputs, self._media_ids)

    def cached_blocks(self, seq: Seq) -> int:
        """Leading blocks of ``seq``'s prompt in the prefix cache (0 when off or none)."""
        key = seq.prepared.prefix_key
        if self.prefix is None or not isinstance(key, prefix_cache.PromptKey):
            return 0
        return self.prefix.match(key)

    def resumable(self, inputs: dict[str, torch.Tensor]) -> bool:
        """A prompt can be prefilled in parts: its positions are known without the model's own pass
        (M-RoPE with images needs ``mm_token_type_ids`` for ``get_rope_index``)."""
        images = any(k not in TOKEN_KEYS for k in inputs)
        return not (images and self.mrope and "mm_token_type_ids" not in inputs)

    def chunked(self, seq: Seq, budget: int) -> bool:
        """Prefill ``seq`` in chunks of ``budget`` tokens between decode steps (``begin``/``advance``)."""
        inputs = seq.prepared.inputs
        return 0 < budget < int(inputs["input_ids"].shape[1]) and self.resumable(inputs)

    def begin(self, seq: Seq) -> prefix_cache.Partial:
        """A prompt's prefill made resumable, from its cached prefix blocks if any; ``advance`` runs it."""
        from transformers import DynamicCache

        inputs = seq.prepared.inputs
        blocks = self.cached_blocks(seq)
        cache = DynamicCache()
        if blocks:
            assert self.prefix is not None and isinstance(seq.prepared.prefix_key, prefix_cache.PromptKey)
            for i, (k, v) in enumerate(self.prefix.take(seq.prepared.prefix_key, blocks)):
                cache.update(k, v, i)
            if self.stats is not None:
                self.stats.prefix_cache_hits += 1
                self.stats.prefix_cache_hit_tokens += blocks * prefix_cache.BLOCK
        positions, delta = prefix_cache.suffix_positions(self.model, inputs, 0, self.mrope)
        media = prefix_cache.media_span(inputs, self._media_ids)
        length = int(inputs["input_ids"].shape[1])
        return prefix_cache.Partial(seq, cache, blocks * prefix_cache.BLOCK, length, positions, delta, media)

    def advance(self, part: prefix_cache.Partial, budget: int = 0) -> bool:
        """Prefill the prompt's next chunk (``budget`` tokens, 0: all the rest; never cutting its
        images). True when the prompt is done: then its first token is sampled and it has joined."""
        inputs = part.seq.prepared.inputs
        start = part.done
        end = prefix_cache.chunk_end(start, budget, part.length, part.media)
        feed: dict[str, Any] = {
            "input_ids": inputs["input_ids"][:, start:end],
            "position_ids": part.positions[..., start:end],
        }
        if start <= part.media[0] < end:  # the chunk holds the images: encode them
            for name, value in inputs.items():
                if name not in TOKEN_KEYS:
                    feed[name] = value
                elif name != "input_ids" and name != "attention_mask":
                    feed[name] = value[:, start:end]
        feed = self._to_device(feed)
        feed[self.cache_kw] = part.cache
        if self.mrope:
            self.model.model.rope_deltas = None
        out = self._forward(1, **feed)
        if self.stats is not None:
            self.stats.prefill_passes += 1
            self.stats.prefill_tokens += end - start
        part.done = end
        if end < part.length:
            return False
        sampled = self._sample([part.seq], out.logits[:, -1, :])
        cache = getattr(out, "past_key_values", None) or part.cache
        self._join([part.seq], [part.length], [part.delta], sampled, cache)
        return True

    def prefill(self, seq: Seq) -> None:
        """Prefill one sequence: from its cached prefix blocks over the rest when there are any, else
        in full."""
        if self.cached_blocks(seq) and self.resumable(seq.prepared.inputs):
            self.advance(self.begin(seq))
        else:
            super().prefill(seq)

    def prefill_batch(self, seqs: list[Seq]) -> None:
        """Prefill several sequences (their images too) in one forward pass, then load each into a slot.

        The prompts are right-padded to the longest: under the causal mask a real token never sees
        the padding after it, so each row computes what it would alone. Only the real columns of
        each row's cache are copied into its slot; the logits are taken at each row's last token.
        """
        lengths = [int(s.prepared.inputs["input_ids"].shape[1]) for s in seqs]
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        batch = collate([s.prepared.inputs for s in seqs], pad_id)
        inputs = self._to_device(without_full_mask(batch) if self.flash_prefill else batch)
        last = sorted({n - 1 for n in lengths})
        keep = torch.tensor(last, device=self.device)
        out, cache = self._prefill_pass(len(seqs), inputs, keep)
        if self.logits_to_keep:  # (batch, len(last), vocab)
            cols = torch.tensor([last.index(n - 1) for n in lengths], device=self.device)
        else:  # (batch, longest, vocab)
            cols = torch.tensor([n - 1 for n in lengths], device=self.device)
        logits = out.logits[torch.arange(len(seqs), device=self.device), cols]
        deltas = self._rope_deltas(len(seqs))
        self._join(seqs, lengths, deltas, self._sample(seqs, logits), cache)

    def evict(self, keep: list[int]) -> None:
        sc = self.slot_cache
        if keep == list(range(len(self.seqs))):
            return
        if sc.allocated:
            for new, old in enumerate(keep):
                if new != old:
                    sc.move(old, new, self.seqs[old].cache_len)
            for slot in range(len(keep), len(self.seqs)):
                sc.reset(slot)
        self.seqs = [self.seqs[i] for i in keep]

    def decode(self) -> list[int]:
        return self.launch().wait()

    def launch(self) -> Pending:
        """Queue a decode step without waiting for it: inputs, graph replay, sampling and the feedback
        of the sampled tokens into the next step's inputs all stay on the device; the tokens are then
        copied (non-blocking) into a pinned host buffer, with an event to wait on."""
        return self.sample_step(self.forward_step())

    def forward_step(self) -> Step:
        """Queue the forward pass of a decode step (its input tokens are on the device already);
        ``sample_step`` samples it. Between the two the host may advance the grammars' matchers
        with the previous step's tokens: the forward does not need them, only the sampling does."""
        seqs = list(self.seqs)
        n = len(seqs)
        sc = self.slot_cache
        need = max(s.cache_len for s in seqs) + 1
        if self.graphs.use_graphs:
            batch, width = kvslots.bucket(n, sc.slots), kvslots.bucket(need, self.width, floor=256)
        else:
            batch, width = n, need
        if self.compiled:  # one width: a width per bucket would compile every batch shape again
            width = self.width
        sc.prepare_step(n)
        logits = self.graphs.run(batch, width)
        self._count_pass(n)
        sc.finish_step(n)
        for s in seqs:
            s.cache_len += 1
            s.next_pos += 1
        return Step(seqs, logits[:n])

    def sample_step(self, step: Step) -> Pending:
        """Sample a queued forward's rows (masks included), feed the tokens to the next step's inputs
        and copy them to the host (non-blocking), with an event to wait on. The rows must still be
        in the slots they had at ``forward_step`` (nothing evicted in between)."""
        seqs, n = step.seqs, len(step.seqs)
        out = sampler.sample_full(seqs, step.logits)
        sampled = out.tokens
        self.slot_cache.set_tokens(n, sampled)
        host = self._host[self._flip]
        self._flip ^= 1
        host[:n].copy_(sampled, non_blocking=True)
        logprobs = None
        if out.logprob_rows:  # copied now, before the next step is queued behind them
            logprobs = (out.logprob_rows, _to_host(out.logprobs), _to_host(out.top_ids))
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return Pending(seqs, host=host, event=event, logprob_host=logprobs)


@dataclass
class Step:
    """A decode step whose forward pass is queued and whose rows are not sampled yet."""

    seqs: list[Seq]
    logits: torch.Tensor


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    """A non-blocking copy into pinned host memory (read after the step's event)."""
    if t is None or t.device.type != "cuda":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host
