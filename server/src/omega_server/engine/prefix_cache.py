"""Prefix caching on the static slot cache: prompt blocks hashed, their KV kept, only the suffix prefilled.

As vLLM's automatic prefix caching, adapted to the slot cache: a prompt is cut into blocks of
``BLOCK`` tokens, and each full block is named by a chained hash (the previous block's hash, the
block's token ids and, from the first image token on, a digest of the request's image inputs: the
same image by content, not by URL). ``PrefixCache`` keeps the keys and values of recently prefilled
blocks on the device (least recently used first out, at most ``capacity`` tokens: on a GPU what the
KV memory budget holds beyond the slots, ``load.start_runner``). A new request looks up its longest run of cached leading blocks (``match``); the
runner copies them into a fresh cache and prefills only the rest of the prompt, at the positions
the whole prompt would have (M-RoPE included: ``suffix_positions``), and the slot is loaded as
after a full prefill.

A cached prefix ends at a block boundary, leaves at least one prompt token to prefill (its logits
give the first output token), and never cuts the image tokens: it ends before the first image
token (the images are then encoded with the suffix) or after the last one (nothing to encode).
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from omega_server.engine.inputs import TOKEN_KEYS

#: tokens per cached block
BLOCK = 16


@dataclass(frozen=True)
class PromptKey:
    """A prompt's block hashes and where its image tokens are (computed once, in ``Engine.prepare``)."""

    hashes: tuple[bytes, ...]  # one per full block of the prompt
    length: int  # prompt tokens
    media_start: int  # first image token (``length`` when there is none)
    media_end: int  # one past the last image token (0 when there is none)

    def usable(self, blocks: int) -> bool:
        """A prefix of ``blocks`` blocks can be cached for this prompt (see the module docstring)."""
        end = blocks * BLOCK
        return 0 < end < self.length and (end <= self.media_start or end >= self.media_end)


def image_token_ids(config: Any) -> set[int]:
    """The placeholder token ids of images (and videos) in a model's prompts."""
    ids: set[int] = set()
    for key in ("image_token_id", "image_token_index", "video_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            ids.add(value)
    return ids


def media_digest(inputs: dict[str, torch.Tensor]) -> bytes:
    """A digest of every input that is not a per-token one (pixel values, image grids): the images'
    content as the model sees it."""
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(inputs):
        if key in TOKEN_KEYS:
            continue
        t = inputs[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def media_span(inputs: dict[str, torch.Tensor], media_ids: set[int]) -> tuple[int, int]:
    """Where a prompt's image tokens are: (first, one past the last); ``(n, 0)`` without images, and
    the whole prompt ``(0, n)`` for images whose placeholder tokens are not known."""
    ids = inputs["input_ids"][0]
    n = int(ids.shape[0])
    is_media = torch.isin(ids, torch.tensor(sorted(media_ids), dtype=ids.dtype)) if media_ids else None
    where = is_media.nonzero().flatten().tolist() if is_media is not None else []
    if where:
        return where[0], where[-1] + 1
    return (0, n) if any(k not in TOKEN_KEYS for k in inputs) else (n, 0)


def chunk_end(done: int, budget: int, length: int, media: tuple[int, int]) -> int:
    """Where the next prefill chunk from ``done`` ends: ``budget`` tokens on (0: the rest), but never
    inside the image tokens (a chunk that reaches them takes them all)."""
    end = length if budget <= 0 else min(done + budget, length)
    start, stop = media
    return stop if done <= start < end < stop else end


def prompt_key(inputs: dict[str, torch.Tensor], media_ids: set[int]) -> PromptKey:
    """The block hashes of one prepared prompt (batch 1)."""
    ids = inputs["input_ids"][0]
    n = int(ids.shape[0])
    start, end = media_span(inputs, media_ids)
    if (start, end) == (0, n) and n:  # images without placeholders we know: cache no image prompt
        return PromptKey(hashes=(), length=n, media_start=0, media_end=n)
    digest = media_digest(inputs) if end else b""
    hashes: list[bytes] = []
    parent = b""
    token_bytes = ids.to(torch.int64).numpy().tobytes()
    for b in range(n // BLOCK):
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(token_bytes[b * BLOCK * 8 : (b + 1) * BLOCK * 8])
        if (b + 1) * BLOCK > start:
            h.update(digest)
        parent = h.digest()
        hashes.append(parent)
    return PromptKey(hashes=tuple(hashes), length=n, media_start=start, media_end=end)


@dataclass
class Partial:
    """A prompt prefilled up to ``done`` tokens (from cached prefix blocks, or chunk by chunk)."""

    seq: Any  # sequence.Seq
    cache: Any  # a transformers DynamicCache holding the keys and values of tokens [0, done)
    done: int
    length: int  # prompt tokens
    positions: torch.Tensor  # the whole prompt's position ids (``suffix_positions`` from 0)
    delta: int  # the prompt's M-RoPE offset
    media: tuple[int, int]  # ``media_span``


class PrefixCache:
    """Blocks of prefilled KV on the device by chained hash, least recently used evicted first.

    A block is one tensor ``(layers, 2, kv_heads, BLOCK, head_dim)``; ``capacity`` is in tokens.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity_blocks = max(capacity // BLOCK, 0)
        self._blocks: collections.OrderedDict[bytes, torch.Tensor] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        """Drop every block (after running out of device memory)."""
        self._blocks.clear()

    def match(self, key: PromptKey) -> int:
        """How many leading blocks of this prompt can be taken from the cache (0: none)."""
        found = 0
        for h in key.hashes:
            if h not in self._blocks:
                break
            found += 1
        while found and not key.usable(found):
            found -= 1
        return found

    def take(self, key: PromptKey, blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``blocks`` blocks' keys and values per layer, each ``(1, kv_heads, tokens, dim)``
        (a fresh copy: the prefill appends to it); marks them recently used."""
        parts = []
        for h in key.hashes[:blocks]:
            self._blocks.move_to_end(h)
            parts.append(self._blocks[h])
        kv = torch.cat(parts, dim=3)
        return [(kv[i, 0][None], kv[i, 1][None]) for i in range(kv.shape[0])]

    def insert(self, key: PromptKey, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Keep the prompt's full blocks not cached yet, from its prefill cache ``layers`` (row 0 of
        each ``(batch, heads, tokens, dim)``, at least the prompt's tokens); returns blocks added."""
        new = [b for b, h in enumerate(key.hashes) if h not in self._blocks]
        if not new or self.capacity_blocks == 0:
            for h in key.hashes:
                if h in self._blocks:
                    self._blocks.move_to_end(h)
            return 0
        lo, hi = new[0] * BLOCK, (new[-1] + 1) * BLOCK
        keys = torch.stack([k[0, :, lo:hi] for k, _ in layers])
        values = torch.stack([v[0, :, lo:hi] for _, v in layers])
        kv = torch.stack([keys, values], dim=1)  # (layers, 2, heads, hi - lo, dim)
        for b, h in enumerate(key.hashes):
            if h in self._blocks:
                self._blocks.move_to_end(h)
            elif b in new:
                self._blocks[h] = kv[:, :, :, (b * BLOCK - lo) : (b + 1) * BLOCK - lo].clone()
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
        return len(new)


def suffix_positions(
    model: Any, inputs: dict[str, torch.Tensor], start: int, mrope: bool
) -> tuple[torch.Tensor, int]:
    """Position ids of prompt tokens ``[start, n)`` as the whole prompt's prefill gives them, and the
    prompt's M-RoPE offset (0 without M-RoPE or without images), on the host.

    M-RoPE with images: the model's own ``get_rope_index`` over the whole prompt; otherwise text
    positions ``start .. n-1`` (shape ``(3, 1, n - start)`` under M-RoPE, ``(1, n - start)`` else).
    """
    ids = inputs["input_ids"]
    n = int(ids.shape[1])
    if mrope and "image_grid_thw" in inputs:
        kwargs = {k: inputs[k] for k in ("mm_token_type_ids", "image_grid_thw") if k in inputs}
        positions, deltas = model.model.get_rope_index(
            ids, attention_mask=inputs.get("attention_mask"), **kwargs
        )
        return positions[..., start:].cpu(), int(deltas.reshape(-1)[0])
    text = torch.arange(start, n, dtype=torch.long)[None]
    return (text[None].expand(3, 1, n - start) if mrope else text), 0
