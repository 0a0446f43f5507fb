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


# -- penalties, bias, top_k and min_p against a per-row reference (HF's order of processors/warpers)


def reference_probs(
    logits: torch.Tensor, prompt: list[int], output: list[int], p: SamplingParams
) -> torch.Tensor:
    """One row's sampling distribution, written plainly, token by token where it can be."""
    x = logits.double().clone()
    for t in set(prompt) | set(output):
        x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    for t in set(output):
        x[t] -= p.presence_penalty + p.frequency_penalty * output.count(t)
    for t, b in p.logit_bias:
        x[t] += b
    if p.temperature <= sampler.SAMPLING_EPS:
        out = torch.zeros_like(x)
        out[int(x.argmax())] = 1.0
        return out
    probs = torch.softmax(x / p.temperature, -1)
    order = probs.argsort(descending=True).tolist()
    keep = order[: p.top_k] if p.top_k > 0 else order
    kept = probs[keep] / probs[keep].sum()
    nucleus, total = [], 0.0
    for t, q in zip(keep, kept.tolist(), strict=True):
        if total >= p.top_p:
            break
        nucleus.append(t)
        total += q
    top = float(probs[nucleus].max())
    final = [t for t in nucleus if float(probs[t]) >= p.min_p * top]
    out = torch.zeros_like(x)
    out[final] = probs[final] / probs[final].sum()
    return out.float()


def penalized_seq(prompt: list[int], output: list[int], **params: object) -> Seq:
    """A sequence whose prompt is ``prompt`` and which has already sampled ``output``."""
    s = seq(**params)
    s.prepared.inputs["input_ids"] = torch.tensor([prompt])
    for t in output:  # as the engine does: one sampling per token, the counts kept on the Seq
        sampler._count([s], torch.tensor([t]), VOCAB)
    return s


CASES = [
    {"temperature": 0.8, "top_k": 3},
    {"temperature": 1.2, "min_p": 0.2},
    {"temperature": 1.0, "top_k": 6, "top_p": 0.7, "min_p": 0.1},
    {"temperature": 0.9, "repetition_penalty": 1.8, "top_k": 8},
    {"temperature": 1.0, "presence_penalty": 1.5, "frequency_penalty": 0.7, "top_k": 10},
    {"temperature": 1.0, "logit_bias": ((7, 5.0), (int(LOGITS.argmax()), -100.0)), "top_k": 5},
]
PROMPT = [int(t) for t in LOGITS.argsort(descending=True)[:4]]  # the likeliest tokens were "seen"
OUTPUT = [int(t) for t in LOGITS.argsort(descending=True)[1:6]] + [PROMPT[1]] * 3


def test_each_row_follows_the_reference_distribution_in_one_mixed_batch() -> None:
    """Every case shares one batch (as running requests do); each row draws from its own reference."""
    per = 8_000
    batch = [penalized_seq(PROMPT, OUTPUT, **case) for case in CASES for _ in range(per)]
    torch.manual_seed(11)
    counts_before = [s.counts.clone() if s.counts is not None else None for s in batch[::per]]
    tokens = sampler.sample_device(batch, LOGITS.expand(len(batch), -1))
    for c, case in enumerate(CASES):
        p = batch[c * per].prepared.params
        want = reference_probs(LOGITS, PROMPT, OUTPUT, p)
        got = tokens[c * per : (c + 1) * per]
        support = set(torch.nonzero(want).flatten().tolist())
        assert set(got.tolist()) <= support, case  # never a token the reference cuts
        assert total_variation(frequencies(got), want) < 0.04, case
        before = counts_before[c]
        if before is not None:  # a penalized row counted the token it drew
            after = batch[c * per].counts
            assert after is not None and float((after - before).sum()) == 1.0


def test_penalties_and_bias_apply_to_greedy_rows() -> None:
    torch.manual_seed(12)
    for _ in range(30):
        logits = torch.randn(VOCAB) * 3
        prompt = torch.randint(0, VOCAB, (6,)).tolist()
        output = torch.randint(0, VOCAB, (8,)).tolist()
        rows = [
            penalized_seq(prompt, output, temperature=0.0, repetition_penalty=3.0),
            penalized_seq(prompt, output, temperature=0.0, presence_penalty=2.0, frequency_penalty=1.0),
            seq(temperature=0.0, logit_bias=((3, 100.0),)),
        ]
        got = sampler.sample(rows, logits.expand(3, -1))
        want = [int(reference_probs(logits, prompt, output, r.prepared.params).argmax()) for r in rows]
        assert got == want
        assert got[2] == 3


def test_logprobs_are_the_models_own_distribution_with_its_top_tokens() -> None:
    torch.manual_seed(13)
    logits = torch.randn(3, VOCAB)
    rows = [
        seq(temperature=0.0, logprobs=True, top_logprobs=4),
        seq(temperature=1.0),
        seq(temperature=1.0, logprobs=True, repetition_penalty=2.0),
    ]
    out = sampler.sample_full(rows, logits)
    assert out.logprob_rows == [0, 2] and out.logprobs is not None and out.top_ids is not None
    logp = torch.log_softmax(logits, -1)
    for j, row in enumerate(out.logprob_rows):
        token = int(out.tokens[row])
        assert torch.isclose(out.logprobs[j, 0], logp[row, token])  # raw: before penalties/temperature
    values, ids = logp[0].topk(4)
    assert out.top_ids[0].tolist() == ids.tolist()
    assert torch.allclose(out.logprobs[0, 1:], values)
    assert int(out.tokens[0]) == int(ids[0])  # greedy: the chosen token is the top one
