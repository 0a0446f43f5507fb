"""Batched sampling (omega_server.engine.sampler): greedy rows, the temperature's distribution, the top-p
nucleus, seeded reproducibility, and rows that do not disturb each other."""

from __future__ import annotations

import torch
from omega_server.engine import sampler
from omega_server.engine.sequence import Seq
from omega_server.engine.types import PreparedRequest, SamplingParams

VOCAB = 50
# peaked enough that temperature and top-p change the distribution a lot (top row 0.43 at T=0.7)
LOGITS = torch.randn(VOCAB, generator=torch.Generator().manual_seed(1)) * 2.5
CPU = torch.device("cpu")


def seq(**params: object) -> Seq:
    p = SamplingParams(max_tokens=1, **params)  # type: ignore[arg-type]
    s = Seq(prepared=PreparedRequest(inputs={}, prompt_tokens=0, params=p), loop=None, queue=None)
    s.generator = sampler.generator(p.seed, CPU)
    return s


def frequencies(tokens: torch.Tensor) -> torch.Tensor:
    return torch.bincount(tokens, minlength=VOCAB).float() / tokens.numel()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def test_greedy_rows_take_the_argmax() -> None:
    """Temperature 0 (and anything up to SAMPLING_EPS) is greedy, as is a nucleus of one token."""
    torch.manual_seed(0)
    logits = torch.randn(4, VOCAB)
    rows = [
        seq(temperature=0.0),
        seq(temperature=sampler.SAMPLING_EPS),
        seq(temperature=1.0, top_p=1e-6),
        seq(temperature=2.0),
    ]
    argmax = logits.argmax(-1).tolist()
    for _ in range(20):
        got = sampler.sample(rows, logits)
        assert got[:3] == argmax[:3]
    # the sampled row does not always take the argmax (its top token has probability < 0.2 at T=2)
    draws = {sampler.sample(rows, logits)[3] for _ in range(40)}
    assert len(draws) > 1


def test_sampled_tokens_follow_the_tempered_distribution() -> None:
    n = 20_000
    torch.manual_seed(3)
    tokens = sampler.sample_device([seq(temperature=1.5) for _ in range(n)], LOGITS.expand(n, -1))
    freq = frequencies(tokens)
    assert total_variation(freq, torch.softmax(LOGITS / 1.5, -1)) < 0.035  # sampling noise: about 0.013
    assert total_variation(freq, torch.softmax(LOGITS / 1.3, -1)) > 0.05  # another temperature is far


def test_top_p_keeps_the_smallest_nucleus_and_renormalizes() -> None:
    probs = torch.softmax(LOGITS / 0.7, -1)
    ranked = probs.argsort(descending=True)
    nucleus = ranked[:3]  # 0.43 + 0.27 < 0.8 <= 0.43 + 0.27 + 0.13
    assert float(probs[ranked[:2]].sum()) < 0.8 <= float(probs[nucleus].sum())
    n = 20_000
    torch.manual_seed(4)
    tokens = sampler.sample_device([seq(temperature=0.7, top_p=0.8) for _ in range(n)], LOGITS.expand(n, -1))
    assert set(tokens.tolist()) == set(nucleus.tolist())  # every draw inside, every member drawn
    want = torch.zeros(VOCAB)
    want[nucleus] = probs[nucleus] / probs[nucleus].sum()
    assert total_variation(frequencies(tokens), want) < 0.03


def test_a_seed_reproduces_its_draws_whatever_else_is_in_the_batch() -> None:
    def draws(seed: int, *, neighbours: bool, steps: int = 30) -> list[int]:
        mine = seq(temperature=1.5, top_p=0.95, seed=seed)
        batch = [seq(temperature=0.0), mine, seq(temperature=1.5)] if neighbours else [mine]
        logits = LOGITS.expand(len(batch), -1)
        row = batch.index(mine)
        return [sampler.sample(batch, logits)[row] for _ in range(steps)]

    torch.manual_seed(5)
    alone = draws(7, neighbours=False)
    torch.manual_seed(6)  # the default generator (the unseeded neighbours') is in another state
    assert draws(7, neighbours=True) == alone
    assert draws(8, neighbours=False) != alone
    assert len(set(alone)) > 3  # a real sequence of draws, not one token


def test_only_a_seeded_request_gets_a_generator() -> None:
    assert sampler.generator(None, CPU) is None
    gen = sampler.generator(2**64 - 1, CPU)  # the top of torch's seed range
    assert gen is not None and gen.initial_seed() == 2**64 - 1
