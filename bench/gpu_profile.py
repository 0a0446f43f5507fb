"""Where a decode step's time goes: the engine's decode loop vs plain generate(), per attention backend.

Run on the accelerator machine from the repository root (flash-attn on PYTHONPATH for the flash rows):

    PYTHONPATH=server/src:FLASH_SITE python bench/gpu_profile.py

Builds a random Qwen2.5-VL-7B-shaped model on the GPU (bf16, nothing downloaded, not saved), then for
sdpa (with and without PyTorch's cuDNN SDPA kernel) and flash_attention_2: ms per decode step of the
engine's runner at batch 1 and 4 and of generate() at batch 1, plus the top operators of a few
profiled decode steps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server" / "src"))
sys.path.insert(0, str(ROOT))  # bench.vlmbench: the model shapes


def config_and_processor() -> tuple[Any, Any]:
    """Qwen2.5-VL-7B's transformers config (``bench/vlmbench/shapes.py``) and its processor, with the
    small Qwen tokenizer of ``omega_server.tiny_text`` (the model's vocabulary stays 152064)."""
    from omega_server import tiny_text

    from bench.vlmbench import shapes

    shape = shapes.QWEN2_5_VL_7B
    tok = tiny_text.build_tokenizer(tiny_text.QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    return shapes.build_config(shape, tok), shapes.build_processor(shape, tok)


def build(dtype: Any = None) -> tuple[Any, Any]:
    """A random Qwen2.5-VL-7B-shaped model on the GPU (bf16 unless ``dtype``) and its processor."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg, processor = config_and_processor()
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            cfg, dtype=dtype or torch.bfloat16, attn_implementation="sdpa"
        )
    model.eval()
    return model, processor


def main() -> int:
    import torch
    from omega_server.engine import GenerationRequest, SamplingParams
    from omega_server.engine.inputs import prepare_inputs
    from omega_server.engine.runner import Runner
    from omega_server.engine.sequence import Seq
    from omega_server.engine.static_runner import StaticRunner
    from PIL import Image

    if len(sys.argv) > 1:  # dry run on a tiny checkpoint (CPU): python bench/gpu_profile.py DIR
        from omega_server import models

        loaded = models.load(Path(sys.argv[1]), attn_implementation="sdpa", device="auto")
        model, processor = loaded.model, loaded.processor
    else:
        model, processor = build()
    dev = model.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    image = Image.new("RGB", (448, 448), (30, 90, 200))
    text = ("The quick brown fox jumps over the lazy dog. " * 8)[:230]
    req = GenerationRequest(
        messages=[
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}
        ],
        params=SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True),
    )
    prepared = prepare_inputs(processor, req, [image], max_model_length=1 << 20)
    print("prompt tokens", prepared.prompt_tokens, flush=True)

    def runner_ms(batch: int, steps: int = 48, static: bool = False) -> float:
        runner: Any = (
            StaticRunner(model, processor, slots=16, width=1024, graphs=dev.type == "cuda")
            if static
            else Runner(model, processor)
        )
        for _ in range(batch):
            runner.prefill(Seq(prepared=prepared, loop=None, queue=None, emit=lambda _: None))
        for _ in range(4):
            runner.decode()
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            runner.decode()
        sync()
        ms = 1000 * (time.perf_counter() - t) / steps
        runner.evict([])
        return ms

    def generate_ms(steps: int = 48) -> float:
        inputs = {k: v.to(dev) for k, v in prepared.inputs.items()}
        model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        sync()
        t = time.perf_counter()
        model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        sync()
        return 1000 * (time.perf_counter() - t) / steps

    def profile(label: str) -> None:
        from torch.profiler import ProfilerActivity, profile

        runner = Runner(model, processor)
        runner.prefill(Seq(prepared=prepared, loop=None, queue=None, emit=lambda _: None))
        for _ in range(3):
            runner.decode()
        sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(5):
                runner.decode()
            sync()
        runner.evict([])
        print(f"\n-- {label}: top ops by CPU time (5 decode steps, batch 1)")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=60))
        if dev.type == "cuda":
            print(f"-- {label}: top ops by CUDA time")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))

    from transformers.utils import is_flash_attn_2_available

    variants = [("sdpa", True), ("sdpa", False)]
    if is_flash_attn_2_available():
        variants.append(("flash_attention_2", True))
    rows = []
    with torch.inference_mode():
        for impl, cudnn in variants:
            model.set_attn_implementation(impl)
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
            label = f"{impl}{'' if cudnn or impl != 'sdpa' else ' (cuDNN SDPA off)'}"
            row = (label, runner_ms(1), runner_ms(4), generate_ms())
            rows.append(row)
            print(row, flush=True)
            if impl == "sdpa" and not cudnn:
                profile(label)
            if impl != "flash_attention_2" and not cudnn:
                row = (f"{label} static+graphs", runner_ms(1, static=True), runner_ms(4, static=True), 0.0)
                rows.append(row)
                print(row, flush=True)
                # equality of the two decode paths on the real shape (bf16): greedy tokens of 32 steps
                seqs = []
                for cls in ("dynamic", "static"):
                    r: Any = (
                        StaticRunner(model, processor, slots=4, width=1024, graphs=dev.type == "cuda")
                        if cls == "static"
                        else Runner(model, processor)
                    )
                    seq = Seq(prepared=prepared, loop=None, queue=None, emit=lambda _: None)
                    r.prefill(seq)
                    toks = [seq.last_token] + [r.decode()[0] for _ in range(31)]
                    seqs.append(toks)
                    r.evict([])
                print("static == dynamic greedy (32 tokens):", seqs[0] == seqs[1], flush=True)
    print("\n== ms per decode step (Qwen2.5-VL-7B shape, bf16, 512-token prompt with a 448x448 image)")
    print(f"{'backend':34} {'engine b1':>10} {'engine b4':>10} {'generate b1':>12}")
    for label, b1, b4, gen in rows:
        print(f"{label:34} {b1:>10.1f} {b4:>10.1f} {gen:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
