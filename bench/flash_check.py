"""Correctness of the flash_attention_2 slot-cache path against sdpa on the GPU (issue 13).

    PYTHONPATH=server/src:. python bench/flash_check.py [--models omega17_vl_exp,qwen2_5_vl_7b] [--steps 8]

For each random-weight shape (bf16, the same seed, so both backends run the same weights): the engine
is loaded with ``sdpa`` and then with ``flash_attention_2``; its /health decode path is printed, and a
``StaticRunner`` with CUDA graphs prefills requests of different lengths (three with one image each,
of different sizes, in one right-padded batch: ``--prefill batch``; or those and a text-only one, one
by one, unpadded: ``--prefill one``) and decodes ``--steps`` steps greedily. The check: the greedy tokens
agree on the first tokens (a divergence is reported with the top-2 logit gap, to tell a near-tie from
a bug), and the decode logits, while the tokens agree, are within bf16 tolerance (max |diff| over the
logits' max |value|). Prints one JSON line per shape; exits 1 when a shape fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server" / "src"))
sys.path.insert(0, str(ROOT))

#: max |flash - sdpa| over max |sdpa| of a step's logits, while the tokens agree (bf16: 8 bits of
#: mantissa, accumulated over the layers; kernels order their sums differently)
TOLERANCE = 0.05


def requests() -> list[Any]:
    from omega_server.engine import GenerationRequest, SamplingParams
    from PIL import Image

    out = []
    for i, (size, words) in enumerate([(448, 40), (224, 5), (672, 120), (0, 60)]):
        text = " ".join(f"w{j % 50}" for j in range(words))
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if size:  # the last one is text only
            image = Image.effect_noise((size, size), 60 + 10 * i).convert("RGB")
            content.insert(0, {"type": "image", "image": image})
        out.append(
            GenerationRequest(
                messages=[{"role": "user", "content": content}],
                params=SamplingParams(max_tokens=64, temperature=0.0),
            )
        )
    return out


def kernel_check() -> list[dict[str, Any]]:
    """``flash_decode.decode_attention`` with the real ``flash_attn_with_kvcache`` vs transformers' sdpa
    over the 4D mask, on the same random bf16 slot cache (the slots' buffers after the step too)."""
    import torch
    from omega_server.engine.kvslots import SlotCache
    from omega_server.kernels import flash_decode
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out = []
    dev = torch.device("cuda")
    for heads, kv_heads, batch, slots in [(32, 4, 1, 4), (32, 4, 4, 4), (32, 4, 64, 64), (28, 4, 64, 64)]:
        torch.manual_seed(batch + heads)
        lengths = torch.randint(1, 1500, (batch,)).tolist()
        caches = []
        for _ in range(2):
            cache = SlotCache(slots, 2048, dev, mrope=False)
            layer = torch.zeros(1, kv_heads, 1, 128, dtype=torch.bfloat16, device=dev)
            cache.allocate([(layer, layer)], torch.bfloat16)
            caches.append(cache)
        for slot, n in enumerate(lengths):
            k = torch.randn(1, kv_heads, n, 128, dtype=torch.bfloat16, device=dev)
            v = torch.randn(1, kv_heads, n, 128, dtype=torch.bfloat16, device=dev)
            for cache in caches:
                cache.load(slot, [(k, v)], n, 0)
        ref, flash = caches
        for cache in caches:
            cache.view = (slots, 2048)
            cache.prepare_step(batch)
        flash.flash = True
        module = type(
            "M", (), {"layer_idx": 0, "num_key_value_groups": heads // kv_heads, "is_causal": True}
        )()
        q = torch.randn(slots, heads, 1, 128, dtype=torch.bfloat16, device=dev)
        k = torch.randn(slots, kv_heads, 1, 128, dtype=torch.bfloat16, device=dev)
        v = torch.randn(slots, kv_heads, 1, 128, dtype=torch.bfloat16, device=dev)
        keys, values = ref.update(k, v, 0)
        assert ref.mask is not None
        want, _ = sdpa_attention_forward(module, q, keys, values, ref.mask, scaling=128**-0.5)
        with flash_decode.slot_decode(flash):
            got, _ = flash_decode.decode_attention(module, q, k, v, None, scaling=128**-0.5)
        diff = float((got.float() - want.float())[:batch].abs().max())
        cache_diff = float(
            (flash.keys[0] - ref.keys[0]).abs().max() + (flash.values[0] - ref.values[0]).abs().max()
        )
        out.append(
            {
                "heads": heads,
                "kv_heads": kv_heads,
                "batch": batch,
                "max_abs_diff": diff,
                "cache_diff": cache_diff,
                "ok": diff <= 2e-2 and cache_diff == 0.0,
            }
        )
    return out


def run_backend(ckpt: Path, backend: str, steps: int, seed: int, batched: bool) -> dict[str, Any]:
    """Tokens and per-step logits of the four requests on ``backend``, and the engine's decode path;
    prefilled in one right-padded batch (``batched``) or one by one (no padding, no mask for flash)."""
    import torch
    from omega_server.engine import Engine, EngineConfig
    from omega_server.engine.sequence import Seq
    from omega_server.engine.static_runner import StaticRunner
    from omega_server.health import decode_report

    from bench.vlmbench import shapes

    with shapes.random_weights(seed):
        eng = Engine.load(
            EngineConfig(
                model_path=str(ckpt),
                attn_impl=backend,
                dtype="bfloat16",
                max_batch_size=4,
                max_model_length=2048,
            )
        )
    try:
        info = eng.info
        runner = StaticRunner(eng._loaded.model, eng._loaded.processor, slots=4, width=2048, graphs=True)
        reqs = requests()[:3] if batched else requests()  # a text-only prompt collates with no image one
        seqs = [Seq(prepared=eng.prepare(r), loop=None, queue=None, emit=lambda item: None) for r in reqs]
        logits: list[torch.Tensor] = []
        step = runner.graphs.run

        def recording(batch: int, width: int) -> torch.Tensor:
            out = step(batch, width)
            logits.append(out[: len(seqs)].float().clone())
            return out

        runner.graphs.run = recording  # type: ignore[method-assign]
        tokens: list[list[int]] = []
        from omega_server.engine import static_runner

        sample = static_runner.sampler.sample

        def sample_recording(seqs_: Any, first: torch.Tensor) -> Any:
            prefill.append(first.reshape(len(seqs_), -1).float().clone())
            return sample(seqs_, first)

        prefill: list[torch.Tensor] = []
        static_runner.sampler.sample = sample_recording  # type: ignore[assignment]
        with torch.inference_mode():
            if batched:
                runner.prefill_batch(seqs)
            else:
                for seq in seqs:
                    runner.prefill(seq)
            tokens.append([s.last_token for s in seqs])
            for _ in range(steps):
                tokens.append(runner.launch().wait())
        static_runner.sampler.sample = sample  # type: ignore[assignment]
        torch.cuda.synchronize()
        return {
            "attn": info.attn,
            "flash_attn": info.flash_attn,
            "decode": decode_report(info),
            "runner_flash": runner.flash,
            "graphs": runner.graphs.use_graphs,
            "tokens": [list(t) for t in zip(*tokens, strict=True)],  # per request
            # (1 + steps, requests, vocab): the prefill's, then each decode step's
            "logits": torch.cat([torch.cat(prefill)[None], torch.stack(logits)]).cpu(),
        }
    finally:
        eng.shutdown()
        del eng
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def compare(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Agreeing leading tokens per request, the logits' relative max diff while they agree, near-ties."""
    agree, rel, gaps = [], 0.0, []
    for r, (a, b) in enumerate(zip(ref["tokens"], got["tokens"], strict=True)):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        agree.append(n)
        # logits[k] gave token k (0: the prefill): compare those computed from equal inputs
        for k in range(min(n + 1, ref["logits"].shape[0])):
            x, y = ref["logits"][k, r], got["logits"][k, r]
            rel = max(rel, float((x - y).abs().max() / x.abs().max().clamp_min(1e-6)))
        if n < len(a):
            top = ref["logits"][n, r].topk(2).values
            gaps.append(round(float(top[0] - top[1]), 4))
    return {"agree": agree, "rel_max_diff": round(rel, 5), "top2_gap_at_divergence": gaps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="omega17_vl_exp,qwen2_5_vl_7b")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefill", choices=["batch", "one"], default="batch")
    args = parser.parse_args()
    from bench.vlmbench import shapes

    failed = False
    kernels = kernel_check()
    failed |= not all(k["ok"] for k in kernels)
    print(json.dumps({"kernel_check": kernels}), flush=True)
    for name in args.models.split(","):
        shape = shapes.get_shape(name)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = shapes.write_checkpoint(shape, Path(tmp) / name)
            batched = args.prefill == "batch"
            ref = run_backend(ckpt, "sdpa", args.steps, args.seed, batched)
            got = run_backend(ckpt, "flash_attention_2", args.steps, args.seed, batched)
        result = compare(ref, got)
        first_ok = all(n >= 2 for n in result["agree"])
        ok = (
            got["attn"] == "flash_attention_2"
            and got["runner_flash"]
            and first_ok
            and result["rel_max_diff"] <= TOLERANCE
        )
        failed |= not ok
        print(
            json.dumps(
                {
                    "model": name,
                    "prefill": args.prefill,
                    "ok": ok,
                    **result,
                    "tolerance": TOLERANCE,
                    "sdpa_decode": ref["decode"],
                    "flash_decode": got["decode"],
                    "flash_attn": got["flash_attn"],
                    "graphs": [ref["graphs"], got["graphs"]],
                    "tokens_sdpa": ref["tokens"],
                    "tokens_flash": got["tokens"],
                }
            ),
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
