"""CPU micro-benchmark of issue 15's structured-output step: the mask fill per row vs batched, and the
engine's tok/s on the tiny model with and without a JSON schema.

Part 1 (host time of one step's mask fill, median over steps): 1, 16 and 64 constrained rows of a
real JSON schema on the tiny byte-level tokenizer, each row advanced along a valid answer; ``serial``
is one ``fill_next_token_bitmask`` per row (the code before), ``batched`` is
``grammar.MaskBuffer.fill`` (one parallel call into the preallocated buffer). Part 2: the static-slot
engine on the tiny Qwen2.5-VL checkpoint, greedy, c=1 and c=16, with and without the schema.

``python bench/grammar_batch.py --out bench/results/cpu-<date>-grammar-mask.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "count", "tags"],
    "additionalProperties": False,
}
ANSWER = '{"name":"a red square on grey","count":12345,"tags":["one","two","three","four"]}'


def mask_fill(rows: int, steps: int) -> dict[str, float]:
    """Median host ms per step: per-row serial fill vs the batched buffer fill, ``rows`` rows."""
    import llguidance.torch as lt
    from omega_server.engine import grammar
    from omega_server.engine.sequence import Seq
    from omega_server.engine.types import PreparedRequest, SamplingParams
    from omega_server.tiny_text import build_tokenizer

    eos = "<|im_end|>"
    tok = build_tokenizer([eos], bos=None, eos=eos, pad=eos)
    g = grammar.Grammars(tok, len(tok), {tok.convert_tokens_to_ids(eos)})
    template = g.constraint(("json_schema", json.dumps(SCHEMA)))
    prepared = PreparedRequest(inputs={}, prompt_tokens=0, params=SamplingParams(max_tokens=8))
    seqs = [Seq(prepared=prepared, loop=None, queue=None, constraint=template.copy()) for _ in range(rows)]
    answer = [ord(ch) for ch in ANSWER]  # the byte tokenizer: one token per character
    buf = grammar.MaskBuffer(rows, g.vocab, torch.device("cpu"))
    serial_mask = torch.full((rows, buf.words), -1, dtype=torch.int32)
    serial, batched = [], []
    for k in range(min(steps, len(answer))):
        t0 = time.perf_counter()
        for i, s in enumerate(seqs):
            assert s.constraint is not None
            lt.fill_next_token_bitmask(s.constraint.matcher, serial_mask, i)
        t1 = time.perf_counter()
        buf.fill(seqs)
        t2 = time.perf_counter()
        assert torch.equal(serial_mask, buf.host[:rows])
        serial.append(t1 - t0)
        batched.append(t2 - t1)
        for s in seqs:
            grammar.advance(s, answer[k])
    med_s, med_b = statistics.median(serial) * 1e3, statistics.median(batched) * 1e3
    return {"rows": rows, "serial_ms": med_s, "batched_ms": med_b, "speedup": med_s / med_b}


def engine_rates(conc_list: list[int], tokens: int) -> list[dict[str, Any]]:
    """Output tok/s of the static-slot engine on the tiny model, greedy, with and without the schema."""
    from omega_server import tiny
    from omega_server.engine import Engine, EngineConfig
    from omega_server.engine.types import GenerationRequest, SamplingParams

    path = tiny.build("qwen2_5_vl", Path(tempfile.mkdtemp()) / "qwen2_5_vl")
    eng = Engine.load(
        EngineConfig(model_path=str(path), attn_impl="sdpa", kv_cache="static", max_batch_size=max(conc_list))
    )
    msgs: Any = [{"role": "user", "content": [{"type": "text", "text": "json please"}]}]
    rows = []
    try:
        for conc in conc_list:
            for schema in (False, True):
                grammar = ("json_schema", json.dumps(SCHEMA)) if schema else None
                params = SamplingParams(
                    max_tokens=tokens, temperature=0.0, grammar=grammar, ignore_eos=not schema
                )
                prepared = [eng.prepare(GenerationRequest(msgs, params)) for _ in range(conc)]
                counts = [0] * conc

                def one(i: int, prepared: list[Any] = prepared, counts: list[int] = counts) -> None:
                    counts[i] = sum(len(o.token_ids) for o in eng.generate_sync(prepared[i], timeout=300))

                t0 = time.perf_counter()
                threads = [threading.Thread(target=one, args=(i,)) for i in range(conc)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                dt = time.perf_counter() - t0
                rows.append(
                    {
                        "concurrency": conc,
                        "schema": schema,
                        "tokens": sum(counts),
                        "output_tokens_per_s": sum(counts) / dt,
                    }
                )
    finally:
        eng.shutdown()
    return rows


def main() -> None:
    """Run both parts, print them side by side, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fills = [mask_fill(n, args.steps) for n in (1, 16, 64)]
    print("mask fill, host ms per step (median):  rows  serial  batched  speedup")
    for f in fills:
        print(f"{'':38}{f['rows']:5} {f['serial_ms']:7.3f} {f['batched_ms']:8.3f} {f['speedup']:7.2f}x")
    rates = engine_rates([1, 16], args.tokens)
    print("engine, tiny qwen2_5_vl, greedy:        conc  schema  tokens  out tok/s")
    for r in rates:
        print(
            f"{'':38}{r['concurrency']:5} {r['schema']!s:7} {r['tokens']:7} {r['output_tokens_per_s']:9.1f}"
        )
    if args.out:
        record = {"command": " ".join(["python", *sys.argv]), "mask_fill": fills, "engine": rates}
        import os

        record["cpus"] = os.cpu_count()
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
