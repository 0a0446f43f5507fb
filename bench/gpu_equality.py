"""Greedy equality of the engine's decode paths with plain generate() on the GPU.

    PYTHONPATH=server/src python bench/gpu_equality.py

For tiny checkpoints of several families (built here, nothing downloaded) and for a random
Qwen2.5-VL-7B-shaped model: the engine (static slot cache + CUDA graphs, and the dynamic cache) vs
``generate()``, in float32 (where the paths must agree token for token) and in bfloat16 (where
random weights give near-ties that different attention kernels may break differently; the top-2
logit gap at the first divergence is printed to show whether it was a tie).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server" / "src"))


def requests(n: int, max_tokens: int) -> list[Any]:
    from omega_server.engine import GenerationRequest, SamplingParams
    from PIL import Image

    out = []
    for i in range(n):
        image = Image.new("RGB", (56 + 14 * i, 42 + 28 * i), (30 * i, 90, 200))
        out.append(
            GenerationRequest(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": image},
                            {"type": "text", "text": "look " * (i + 2)},
                        ],
                    }
                ],
                params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
            )
        )
    return out


def compare(engine: Any, reqs: list[Any]) -> list[tuple[bool, int | None, float | None]]:
    import torch

    async def run() -> list[list[int]]:
        async def one(r: Any) -> list[int]:
            return [t async for o in engine.stream(engine.prepare(r)) for t in o.token_ids]

        return list(await asyncio.gather(*(one(r) for r in reqs)))

    got = asyncio.run(run())
    model = engine._loaded.model
    results = []
    for req, toks in zip(reqs, got, strict=True):
        p = engine.prepare(req)
        inputs = {k: v.to(model.device) for k, v in p.inputs.items()}
        n = req.params.max_tokens
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=n,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        ref = out.sequences[0, p.prompt_tokens :].tolist()
        first = next((i for i, (a, b) in enumerate(zip(toks, ref, strict=False)) if a != b), None)
        gap = None
        if first is not None:
            top2 = out.scores[first][0].float().topk(2).values
            gap = float(top2[0] - top2[1])
        results.append((toks == ref, first, gap))
    return results


def main() -> int:
    import torch
    from omega_server import tiny
    from omega_server.engine import Engine, EngineConfig

    print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("qwen2_5_vl", "qwen3_vl_moe", "llava", "idefics3"):
            path = tiny.build(arch, Path(tmp) / arch)
            for dtype in ("float32", "bfloat16"):
                for kv in ("static", "dynamic"):
                    eng = Engine.load(
                        EngineConfig(
                            model_path=str(path), attn_impl="sdpa", dtype=dtype, kv_cache=kv, max_batch_size=4
                        )
                    )
                    try:
                        res = compare(eng, requests(6, 24))
                        graphs = getattr(eng._runner, "graphs", None)
                        print(
                            f"{arch:14} {dtype:9} {kv:7} graphs={eng.info.cuda_graphs!s:5} "
                            f"graph_error={getattr(graphs, 'error', None)} equal={[r[0] for r in res]} "
                            f"first_diff={[r[1] for r in res]} top2_gap={[r[2] for r in res]}",
                            flush=True,
                        )
                    finally:
                        eng.shutdown()
    # the real shape (random weights), float32 (33 GB) then bfloat16, static cache + graphs
    import time

    from gpu_profile import build  # type: ignore[import-not-found]
    from omega_server import models
    from omega_server.engine import EngineInfo
    from omega_server.kernels import configure_sdpa_kernels

    configure_sdpa_kernels()
    if "--tiny-only" in sys.argv:
        return 0
    for tdtype in (torch.float32, torch.bfloat16):
        model, processor = build(tdtype)
        loaded = models.LoadedModel(
            model=model,
            processor=processor,
            path=Path("."),
            model_type="qwen2_5_vl",
            resolved_model_type="qwen2_5_vl",
            dtype=tdtype,
            devices=["cuda:0"],
        )
        cfg = EngineConfig(model_path=".", attn_impl="sdpa", max_batch_size=4, max_model_length=2048)
        info = EngineInfo(
            attn="sdpa",
            attn_requested="sdpa",
            flash_attn={},
            dtype=str(tdtype),
            devices=["cuda:0"],
            device_names=[],
            model_type="qwen2_5_vl",
            max_batch_size=4,
            max_model_length=2048,
        )
        started = time.perf_counter()
        eng = Engine(cfg, loaded, info)
        try:
            res = compare(eng, requests(4, 32))
            print(
                f"Qwen2.5-VL-7B {tdtype!s:15} kv={eng.info.kv_cache} graphs={eng.info.cuda_graphs} "
                f"equal={[r[0] for r in res]} first_diff={[r[1] for r in res]} top2_gap={[r[2] for r in res]} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        finally:
            eng.shutdown()
            del eng, loaded, model
            torch.cuda.empty_cache()
    return 0


def probe_7b() -> int:
    """float32, one request at a time: each decode path vs generate(), and how far their logits differ."""
    import torch
    from gpu_profile import build  # type: ignore[import-not-found]
    from omega_server.engine import sampler
    from omega_server.engine.inputs import prepare_inputs
    from omega_server.engine.runner import Runner
    from omega_server.engine.sequence import Seq
    from omega_server.engine.static_runner import StaticRunner
    from omega_server.kernels import configure_sdpa_kernels

    configure_sdpa_kernels()
    model, processor = build(torch.float32)
    req = requests(1, 32)[0]
    prepared = prepare_inputs(processor, req, [req.messages[0]["content"][0]["image"]], max_model_length=4096)
    inputs = {k: v.to("cuda") for k, v in prepared.inputs.items()}
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=32, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        ref = out.sequences[0, prepared.prompt_tokens :].tolist()
        gaps = [float(s[0].float().topk(2).values.diff().abs()) for s in out.scores]
        scale = float(out.scores[0][0].float().std())
        print(
            f"7B {next(model.parameters()).dtype}: logit std {scale:.4f}; top-2 gap per step: median {sorted(gaps)[16]:.4f} min {min(gaps):.5f}"
        )
        runners = {
            "dynamic": Runner(model, processor),
            "static": StaticRunner(model, processor, slots=4, width=2048, graphs=False),
            "static+graphs": StaticRunner(model, processor, slots=4, width=2048, graphs=True),
        }
        first_logits = {}
        for name, runner in runners.items():
            seq = Seq(prepared=prepared, loop=None, queue=None, emit=lambda _: None)
            runner.prefill(seq)
            toks = [seq.last_token]
            # Every runner samples through sampler.sample_full.
            orig = sampler.sample_full
            captured: list[torch.Tensor] = []

            def spy(
                seqs: Any, logits: torch.Tensor, orig: Any = orig, captured: list[torch.Tensor] = captured
            ) -> Any:
                captured.append(logits.float().clone())
                return orig(seqs, logits)

            sampler.sample_full = spy  # type: ignore[assignment]
            try:
                for _ in range(31):
                    toks.append(runner.decode()[0])
            finally:
                sampler.sample_full = orig  # type: ignore[assignment]
            runner.evict([])
            first_logits[name] = captured[0][0]
            diff = next((i for i, (a, b) in enumerate(zip(toks, ref, strict=False)) if a != b), None)
            print(
                f"7B {next(model.parameters()).dtype} {name:14} equal={toks == ref} first_diff={diff}",
                flush=True,
            )
        for name in ("static", "static+graphs"):
            d = (first_logits[name] - first_logits["dynamic"]).abs().max()
            print(f"max |logits({name}) - logits(dynamic)| at the first decode step: {float(d):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(probe_7b() if "--probe-7b" in sys.argv else main())
