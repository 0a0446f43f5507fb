"""Sampling one token per running sequence, for the whole batch at once, on the logits' device.

Every row's logits first get its structured-output mask (``engine.grammar``: disallowed tokens at
minus infinity), then its penalties and biases, in this order: ``repetition_penalty`` (HF's:
a positive logit of a token seen in the prompt or the output is divided by it, a negative one
multiplied), ``presence_penalty`` and ``frequency_penalty`` (OpenAI's, over the output's tokens),
then ``logit_bias``. Greedy rows (temperature at or below ``SAMPLING_EPS``) take the argmax of that.
The other rows are scaled by their temperature, then cut (in this order, as HF's warpers) to their
``top_k`` most likely tokens, to their ``top_p`` nucleus of what is left, and to the tokens of at
least ``min_p`` times the top probability, in batched tensor ops; a row with a seed draws from its
own generator (reproducible), the unseeded ones draw together from the default generator.

Log-probabilities (rows that ask for them) are of the model's own distribution: the log-softmax of
the raw logits, before penalties, bias and temperature (as vLLM reports them by default).
Penalty state (a row's output token counts and its prompt's tokens) lives on the device, on the
``Seq``, and is updated here from the sampled tokens without a host sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from omega_server.engine import grammar

if TYPE_CHECKING:
    from omega_server.engine.sequence import Seq
    from omega_server.engine.types import SamplingParams

#: temperatures at or below this are greedy decoding (smaller ones would overflow the softmax)
SAMPLING_EPS = 1e-5
#: the most ``top_logprobs`` a request may ask for (OpenAI's limit)
MAX_TOP_LOGPROBS = 20


@dataclass
class Sampled:
    """One step's tokens (one per row) and, for the rows in ``logprob_rows``, their log-probabilities.

    ``logprobs[j]`` is row ``logprob_rows[j]``'s: the chosen token's log-probability first, then the
    top ``top_ids.shape[1]`` tokens' (ids in ``top_ids[j]``). All on the logits' device.
    """

    tokens: torch.Tensor
    logprob_rows: list[int]
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None


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
    return sample_full(seqs, logits).tokens


def sample_full(seqs: list[Seq], logits: torch.Tensor) -> Sampled:
    """Sample one token per row, with the log-probabilities the rows ask for; no host sync."""
    scores = _processed(seqs, logits)
    tokens = _pick(seqs, scores)
    _count(seqs, tokens, logits.shape[-1])
    return _with_logprobs(seqs, logits, tokens)


def _penalized(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def _state(seq: Seq, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A penalized sequence's output token counts and prompt tokens (made at its first sampling)."""
    if seq.counts is None or seq.prompt_seen is None:
        seq.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        ids = seq.prepared.inputs.get("input_ids")
        if ids is not None:
            flat = ids.reshape(-1).to(device)
            seen[flat[(flat >= 0) & (flat < vocab)]] = True
        seq.prompt_seen = seen
    return seq.counts, seq.prompt_seen


def _processed(seqs: list[Seq], logits: torch.Tensor) -> torch.Tensor:
    """float32 logits with each row's penalties and logit bias applied."""
    scores = grammar.apply(seqs, logits.float())
    dev = logits.device
    vocab = logits.shape[-1]
    rows = [i for i, s in enumerate(seqs) if _penalized(s.prepared.params)]
    if rows:
        params = [seqs[i].prepared.params for i in rows]
        states = [_state(seqs[i], vocab, dev) for i in rows]
        counts = torch.stack([c for c, _ in states])
        present = counts > 0
        seen = torch.stack([s for _, s in states]) | present
        index = torch.tensor(rows, device=dev)
        sub = scores.index_select(0, index)
        rep = torch.tensor([p.repetition_penalty for p in params], device=dev)[:, None]
        sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)
        presence = torch.tensor([p.presence_penalty for p in params], device=dev)[:, None]
        frequency = torch.tensor([p.frequency_penalty for p in params], device=dev)[:, None]
        sub = sub - presence * present.float() - frequency * counts
        scores = scores.index_copy(0, index, sub)
    biased = [(i, t, b) for i, s in enumerate(seqs) for t, b in s.prepared.params.logit_bias]
    if biased:
        if scores.data_ptr() == logits.data_ptr():
            scores = scores.clone()
        at_rows = torch.tensor([i for i, _, _ in biased], device=dev)
        at_cols = torch.tensor([t for _, t, _ in biased], device=dev)
        values = torch.tensor([b for _, _, b in biased], device=dev, dtype=torch.float32)
        scores.index_put_((at_rows, at_cols), values, accumulate=True)
    return scores


def _pick(seqs: list[Seq], scores: torch.Tensor) -> torch.Tensor:
    """Greedy rows' argmax; the others drawn from their tempered, truncated distribution."""
    greedy = scores.argmax(dim=-1)
    rows = [i for i, s in enumerate(seqs) if s.prepared.params.temperature > SAMPLING_EPS]
    if not rows:
        return greedy
    dev = scores.device
    vocab = scores.shape[-1]
    params = [seqs[i].prepared.params for i in rows]
    index = torch.tensor(rows, device=dev)
    temps = torch.tensor([p.temperature for p in params], device=dev, dtype=torch.float32)
    probs = torch.softmax(scores.index_select(0, index) / temps[:, None], dim=-1)
    top_k = any(0 < p.top_k < vocab for p in params)
    if top_k or any(p.top_p < 1.0 for p in params):
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        if top_k:
            k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=dev)
            ranks = torch.arange(vocab, device=dev)
            sorted_probs = sorted_probs.masked_fill(ranks[None, :] >= k[:, None], 0.0)
        top_p = torch.tensor([p.top_p for p in params], device=dev, dtype=torch.float32)
        cumulative = sorted_probs.cumsum(-1)
        # keep the smallest prefix reaching top_p of what top_k left (the first token always stays)
        drop = cumulative - sorted_probs > top_p[:, None] * cumulative[:, -1:]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
    if any(p.min_p > 0.0 for p in params):
        min_p = torch.tensor([p.min_p for p in params], device=dev, dtype=torch.float32)
        floor = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    picked = torch.empty(len(rows), dtype=torch.long, device=dev)
    seeded = [j for j, p in enumerate(params) if p.seed is not None]
    free = [j for j, p in enumerate(params) if p.seed is None]
    for j in seeded:
        picked[j : j + 1] = torch.multinomial(probs[j], 1, generator=seqs[rows[j]].generator)
    if free:
        at = torch.tensor(free, device=dev)
        picked[at] = torch.multinomial(probs.index_select(0, at), 1).squeeze(1)
    return greedy.index_put((index,), picked)


def _count(seqs: list[Seq], tokens: torch.Tensor, vocab: int) -> None:
    """Add each penalized row's sampled token to its output counts (on the device)."""
    for i, s in enumerate(seqs):
        if _penalized(s.prepared.params):
            counts, _ = _state(s, vocab, tokens.device)
            counts.index_add_(0, tokens[i : i + 1], torch.ones(1, device=tokens.device))


def _with_logprobs(seqs: list[Seq], logits: torch.Tensor, tokens: torch.Tensor) -> Sampled:
    rows = [i for i, s in enumerate(seqs) if s.prepared.params.logprobs]
    if not rows:
        return Sampled(tokens, [])
    index = torch.tensor(rows, device=logits.device)
    logp = torch.log_softmax(logits.float().index_select(0, index), dim=-1)
    chosen = logp.gather(1, tokens.index_select(0, index)[:, None])
    k = max(seqs[i].prepared.params.top_logprobs for i in rows)
    if k <= 0:
        return Sampled(tokens, rows, chosen, None)
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return Sampled(tokens, rows, torch.cat([chosen, values], dim=1), ids)
