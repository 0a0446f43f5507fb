"""The decode kernels of omega_server, side by side with transformers' paths, on the accelerator machine.

1. MoE experts at the Omega17VLExp shape (128 experts, top 8, hidden 2048, intermediate 768, bf16):
   transformers' ``grouped_mm`` experts vs ``omega_server.kernels.moe_decode.fused_experts`` (with a sweep of
   its block shapes), at 1-8 tokens. Checked first against a float32 reference.
2. One-token attention at the Omega (32 query / 4 key-value heads) and Qwen2.5-VL-7B (28 / 4) shapes,
   head dim 128, a 1088-column slot cache with ragged lengths: transformers' ``sdpa`` (which copies the
   key/value heads when there is a mask), PyTorch's SDPA on the packed heads (``gqa_decode``'s
   fallback) and ``omega_server.kernels.splitk_attention`` (what ``gqa_decode`` runs on a GPU).

Each variant is captured in a CUDA graph over several layers' worth of inputs (more bytes than the L2
holds) and timed by its replays (``triton.testing.do_bench_cudagraph``, median). Prints a table per
part and writes the rows as JSON to ``--out``.

    python -m bench.decode_kernels --out $OUT/decode-kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HBM_BYTES_PER_S = 3.35e12


def _time_ms(fn: Any) -> float:
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))


def _emit(row: dict[str, Any]) -> dict[str, Any]:
    """Print a row as soon as it is measured (a run cut short still shows what it got)."""
    print(json.dumps(row), flush=True)
    return row


def moe_rows(layers: int, tokens_list: list[int], sweep: bool) -> list[dict[str, Any]]:
    from omega_server.kernels import moe_decode
    from transformers.integrations.moe import grouped_mm_experts_forward
    from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeTextConfig
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextExperts

    cfg = Qwen3VLMoeTextConfig(
        hidden_size=2048, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, hidden_act="silu"
    )
    cfg._experts_implementation = "grouped_mm"
    torch.manual_seed(0)
    stack = []
    for _ in range(layers):
        with torch.device("cuda"):
            ex = Qwen3VLMoeTextExperts(cfg).to(torch.bfloat16)
        with torch.no_grad():
            ex.gate_up_proj.normal_(0, 0.02)
            ex.down_proj.normal_(0, 0.02)
        stack.append(ex)
    rows: list[dict[str, Any]] = []
    configs = [(moe_decode.GATE_UP_BLOCKS, moe_decode.DOWN_BLOCKS)]
    if sweep:
        for blocks in ((8, 256, 4), (32, 128, 4), (16, 128, 4), (16, 512, 8), (32, 256, 8)):
            configs.append((blocks, blocks))
    expert_bytes = (2 * 768 * 2048 + 2048 * 768) * 2
    for tokens in tokens_list:
        inputs = []
        for _ in range(layers):
            x = torch.randn(tokens, 2048, device="cuda", dtype=torch.bfloat16)
            probs = torch.softmax(torch.randn(tokens, 128, device="cuda"), -1)
            w, idx = probs.topk(8, -1)
            inputs.append((x, idx, (w / w.sum(-1, keepdim=True)).to(torch.bfloat16)))
        unique = sum(len(torch.unique(i)) for _, i, _ in inputs) / layers
        # correctness on the first layer: fp32 math on the same bf16 weights
        ex0, (x0, i0, w0) = stack[0], inputs[0]
        with torch.no_grad():
            ref = _reference(ex0, x0, i0, w0)
            fused = moe_decode.fused_experts(x0, ex0.gate_up_proj, ex0.down_proj, i0, w0)
            grouped = grouped_mm_experts_forward(ex0, x0, i0, w0)
        err_fused = ((fused.float() - ref).norm() / ref.norm()).item()
        err_grouped = ((grouped.float() - ref).norm() / ref.norm()).item()

        def run_grouped(inputs: list[Any] = inputs) -> None:
            for ex, (x, i, w) in zip(stack, inputs, strict=True):
                grouped_mm_experts_forward(ex, x, i, w)

        base_ms = _time_ms(run_grouped) / layers
        rows.append(
            _emit(
                {
                    "part": "moe",
                    "tokens": tokens,
                    "variant": "grouped_mm (transformers)",
                    "us_per_layer": base_ms * 1e3,
                    "unique_experts": unique,
                    "GB_per_s": unique * expert_bytes / (base_ms * 1e-3) / 1e9,
                    "rel_err_vs_fp32": err_grouped,
                }
            )
        )
        for gate_up, down in configs:
            moe_decode.GATE_UP_BLOCKS, moe_decode.DOWN_BLOCKS = gate_up, down
            try:

                def run_fused(inputs: list[Any] = inputs) -> None:
                    for ex, (x, i, w) in zip(stack, inputs, strict=True):
                        moe_decode.fused_experts(x, ex.gate_up_proj, ex.down_proj, i, w)

                ms = _time_ms(run_fused) / layers
            except Exception as exc:  # a block shape the compiler refuses
                print(f"  blocks {gate_up}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            rows.append(
                _emit(
                    {
                        "part": "moe",
                        "tokens": tokens,
                        "variant": f"fused blocks={list(gate_up)}",
                        "us_per_layer": ms * 1e3,
                        "unique_experts": unique,
                        "GB_per_s": 8 * tokens * expert_bytes / (ms * 1e-3) / 1e9,
                        "rel_err_vs_fp32": err_fused,
                        "speedup_vs_grouped_mm": base_ms / ms,
                    }
                )
            )
        moe_decode.GATE_UP_BLOCKS, moe_decode.DOWN_BLOCKS = configs[0]
    return rows


def _reference(ex: Any, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0], x.shape[1], device=x.device)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = int(idx[t, j])
            gate, up = (ex.gate_up_proj[e].float() @ x[t].float()).chunk(2)
            act = torch.nn.functional.silu(gate) * up
            out[t] += float(w[t, j]) * (ex.down_proj[e].float() @ act)
    return out


def attention_rows(layers: int, batches: list[int], width: int) -> list[dict[str, Any]]:
    from omega_server.kernels import gqa_decode, splitk_attention
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows: list[dict[str, Any]] = []
    for shape, heads in (("omega17_vl_exp", 32), ("qwen2_5_vl_7b", 28)):
        kv_heads, dim = 4, 128
        module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
        for batch in batches:
            torch.manual_seed(batch)
            lengths = torch.randint(width // 2, width, (batch,))
            mask = torch.full((batch, 1, 1, width), torch.finfo(torch.bfloat16).min, dtype=torch.bfloat16)
            for row, n in enumerate(lengths.tolist()):
                mask[row, :, :, :n] = 0
            mask = mask.cuda()
            per_layer = [
                (
                    torch.randn(batch, heads, 1, dim, device="cuda", dtype=torch.bfloat16),
                    torch.randn(batch, kv_heads, width, dim, device="cuda", dtype=torch.bfloat16),
                    torch.randn(batch, kv_heads, width, dim, device="cuda", dtype=torch.bfloat16),
                )
                for _ in range(layers)
            ]
            q, k, v = per_layer[0]
            want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)  # type: ignore[arg-type]
            kv_bytes = 2 * batch * kv_heads * width * dim * 2
            variants: dict[str, Any] = {
                "sdpa (transformers)": lambda q, k, v, m=module, mask=mask: sdpa_attention_forward(
                    m, q, k, v, mask, scaling=128**-0.5
                )[0],
                "packed sdpa": lambda q, k, v, g=heads // kv_heads, mask=mask: gqa_decode.packed_sdpa(
                    q, k, v, mask, g, 128**-0.5
                ),
                "split-K (triton)": lambda q, k, v, mask=mask: splitk_attention.attention(
                    q, k, v, mask, 128**-0.5
                ),
            }
            times = {}
            errs = {}
            for name, fn in variants.items():
                errs[name] = ((fn(q, k, v).float() - want.float()).norm() / want.float().norm()).item()

                def run(fn: Any = fn, per_layer: list[Any] = per_layer) -> None:
                    for q, k, v in per_layer:
                        fn(q, k, v)

                times[name] = _time_ms(run) / layers
            for name, ms in times.items():
                rows.append(
                    _emit(
                        {
                            "part": "attention",
                            "shape": shape,
                            "batch": batch,
                            "width": width,
                            "variant": name,
                            "us_per_layer": ms * 1e3,
                            "kv_GB_per_s": kv_bytes / (ms * 1e-3) / 1e9,
                            "rel_err_vs_sdpa": errs[name],
                            "speedup": times["sdpa (transformers)"] / ms,
                        }
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("decode-kernels.json"))
    parser.add_argument("--layers", type=int, default=4, help="layers' worth of inputs per timed replay")
    parser.add_argument("--tokens", default="1,4,8")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--width", type=int, default=1088)
    parser.add_argument(
        "--sweep", action="store_true", help="also time other block shapes of the fused kernels"
    )
    args = parser.parse_args(argv)
    started = time.time()
    rows = attention_rows(args.layers, [int(b) for b in args.batches.split(",")], args.width)
    rows += moe_rows(args.layers, [int(t) for t in args.tokens.split(",")], args.sweep)
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "command": "python -m bench.decode_kernels " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": round(time.time() - started, 1),
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        fused = r["part"] == "moe" and r["variant"].startswith("fused")
        if fused and (r["tokens"] not in best or r["us_per_layer"] < best[r["tokens"]]["us_per_layer"]):
            best[r["tokens"]] = r
    print("\nMoE experts, Omega shape, per layer (us)")
    for r in rows:
        if r["part"] == "moe" and (
            not r["variant"].startswith("fused") or r is best.get(r["tokens"]) or "256, 4" in r["variant"]
        ):
            print(
                f"  T={r['tokens']:<3} {r['variant']:<32} {r['us_per_layer']:8.1f} us  "
                f"{r['GB_per_s']:7.0f} GB/s  err {r['rel_err_vs_fp32']:.1e}  x{r.get('speedup_vs_grouped_mm', 1):.2f}"
            )
    print("\nOne-token attention per layer (us)")
    for r in rows:
        if r["part"] == "attention":
            print(
                f"  {r['shape']:<15} B={r['batch']:<3} {r['variant']:<20} {r['us_per_layer']:8.1f} us "
                f"{r['kv_GB_per_s']:7.0f} GB/s  x{r['speedup']:.2f}  err {r['rel_err_vs_sdpa']:.1e}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
