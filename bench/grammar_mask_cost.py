"""Per-token cost on the CPU of a JSON-schema token mask, for each grammar library installed (issue 15).

Builds a byte-level BPE tokenizer of ``--vocab`` tokens (trained here on Python sources, nothing
downloaded), compiles the bench's strict schema (``vlmbench.scenarios.IMAGE_REPORT_SCHEMA``) with each
of llguidance, xgrammar and outlines-core that imports, then walks a schema-valid answer token by
token: fill the next-token mask, check the token is allowed, advance. Prints one JSON line per
library: compile seconds and the mean / p99 microseconds per token of filling the mask.

    python bench/grammar_mask_cost.py --vocab 65536
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.vlmbench.scenarios import IMAGE_REPORT_SCHEMA

ANSWER = json.dumps(
    {
        "caption": "A red bicycle leaning against a wall next to 2 potted plants and a sign.",
        "objects": [
            {"name": "bicycle", "count": 1},
            {"name": "plant", "count": 2},
            {"name": "sign", "count": 1},
        ],
        "has_text": True,
    }
)


def tokenizer(vocab: int) -> Any:
    """A byte-level BPE fast tokenizer with about ``vocab`` tokens, trained on this Python's sources."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(Path(json.__file__).parent.parent.rglob("*.py"))[:6000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((p.read_text(errors="ignore") for p in files), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _ignore(_: Any) -> None:
    """Drop a library call's result (the walk times the calls, not what they return)."""


def walk(
    fill: Callable[[], None], allowed: Callable[[int], bool], advance: Callable[[int], None], ids: list[int]
) -> list[float]:
    times = []
    for t in ids:
        start = time.perf_counter()
        fill()
        times.append(time.perf_counter() - start)
        assert allowed(t), f"token {t} refused"
        advance(t)
    return times


def llguidance_cost(hf: Any, schema: str, ids: list[int]) -> tuple[float, list[float]]:
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    start = time.perf_counter()
    tok = llguidance.hf.from_tokenizer(hf)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    matcher = llguidance.LLMatcher(tok, grammar)
    compile_s = time.perf_counter() - start
    mask = lt.allocate_token_bitmask(1, tok.vocab_size)
    times = walk(
        lambda: lt.fill_next_token_bitmask(matcher, mask, 0),
        lambda t: bool((int(mask[0, t // 32]) >> (t % 32)) & 1),
        lambda t: _ignore(matcher.consume_token(t)),
        ids,
    )
    return compile_s, times


def xgrammar_cost(hf: Any, schema: str, ids: list[int]) -> tuple[float, list[float]]:
    import xgrammar as xgr

    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=len(hf))
    compiled = xgr.GrammarCompiler(info).compile_json_schema(schema)
    matcher = xgr.GrammarMatcher(compiled)
    compile_s = time.perf_counter() - start
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    times = walk(
        lambda: _ignore(matcher.fill_next_token_bitmask(mask)),
        lambda t: bool((int(mask[0, t // 32]) >> (t % 32)) & 1),
        lambda t: _ignore(matcher.accept_token(t)),
        ids,
    )
    return compile_s, times


def outlines_cost(hf: Any, schema: str, ids: list[int]) -> tuple[float, list[float]]:
    import torch
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    start = time.perf_counter()
    eos = hf.eos_token_id
    pieces: dict[str, list[int]] = {}
    for token, i in hf.get_vocab().items():
        if i != eos:
            pieces.setdefault(hf.convert_tokens_to_string([token]), []).append(i)
    index = Index(build_regex_from_schema(schema), Vocabulary(eos, pieces))
    guide = Guide(index)
    compile_s = time.perf_counter() - start
    mask = torch.zeros((len(hf) + 31) // 32, dtype=torch.int32)
    times = walk(
        lambda: guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size()),
        lambda t: bool((int(mask[t // 32]) >> (t % 32)) & 1),
        lambda t: _ignore(guide.advance(t)),
        ids,
    )
    return compile_s, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=65536)
    args = parser.parse_args()
    hf = tokenizer(args.vocab)
    ids = hf.encode(ANSWER, add_special_tokens=False)
    schema = json.dumps(IMAGE_REPORT_SCHEMA)
    for name, cost in (
        ("llguidance", llguidance_cost),
        ("xgrammar", xgrammar_cost),
        ("outlines-core", outlines_cost),
    ):
        try:
            compile_s, times = cost(hf, schema, ids)
        except ImportError as exc:
            print(json.dumps({"library": name, "error": f"not installed: {exc}"}))
            continue
        us = sorted(t * 1e6 for t in times)
        print(
            json.dumps(
                {
                    "library": name,
                    "vocab": len(hf),
                    "tokens": len(ids),
                    "compile_s": round(compile_s, 3),
                    "mask_us_mean": round(statistics.fmean(us), 1),
                    "mask_us_p99": round(us[int(0.99 * (len(us) - 1))], 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
