"""Sampling one token per running sequence, for the whole batch at once, on the logits' device.

Greedy rows (temperature at or below ``SAMPLING_EPS``) take the argmax. The other rows are scaled by
their temperature and cut to their top-p nucleus in batched tensor ops; a row with a seed draws from
its own generator (reproducible), the unseeded ones draw together from the default generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from omega_server.engine.sequence import Seq

#: temperatures at or below this are greedy decoding (smaller ones would overflow the softmax)
SAMPLING_EPS = 1e-5


def generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A generator seeded with ``seed`` on ``device`` (the CPU for a CPU model), or None without a seed."""
    if seed is None:
        return None
    gen = torch.Generator(device=device if device.type == "cuda" else torch.device("cpu"))
    gen.manual_seed(seed)
    return gen


def sample(seqs: list[Seq], logits: torch.Tensor) -> list[int]:
    """Sample one token per row and read them back (one device->host copy)."""
    out: list[int] = sample_device(seqs, logits).tolist()
    return out


def sample_device(seqs: list[Seq], logits: torch.Tensor) -> torch.Tensor:
    """Sample one token per row of ``logits`` (one row per sequence, in order); no host sync."""
    greedy = logits.float().argmax(dim=-1)
    rows = [i for i, s in enumerate(seqs) if s.prepared.params.temperature > SAMPLING_EPS]
    if not rows:
        return greedy
    dev = logits.device
    params = [seqs[i].prepared.params for i in rows]
    index = torch.tensor(rows, device=dev)
    temps = torch.tensor([p.temperature for p in params], device=dev, dtype=torch.float32)
    probs = torch.softmax(logits.float().index_select(0, index) / temps[:, None], dim=-1)
    if any(p.top_p < 1.0 for p in params):
        top_p = torch.tensor([p.top_p for p in params], device=dev, dtype=torch.float32)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop = cumulative - sorted_probs > top_p[:, None]  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
    picked = torch.empty(len(rows), dtype=torch.long, device=dev)
    seeded = [j for j, p in enumerate(params) if p.seed is not None]
    free = [j for j, p in enumerate(params) if p.seed is None]
    for j in seeded:
        picked[j : j + 1] = torch.multinomial(probs[j], 1, generator=seqs[rows[j]].generator)
    if free:
        at = torch.tensor(free, device=dev)
        picked[at] = torch.multinomial(probs.index_select(0, at), 1).squeeze(1)
    return greedy.index_put((index,), picked)
