"""The KV slot count the server's sizing (``engine.kv_budget``) picks for a model shape on a device.

Two ways, from the repository root:

    # on the accelerator machine: load the engine for real (random weights of the shape, the server's
    # own loading, profiling and sizing path) at each MAX_MODEL_LENGTH and print what it chose
    python bench/kv_slots.py --measure --out OUT_DIR

    # anywhere (no GPU): the same sizing function on an estimate of the device's numbers (weights
    # from the shape's parameter count, on the meta device; --overhead-gib and --peak-gib stand in for
    # the CUDA context and the profiled prefill's peak)
    python bench/kv_slots.py

Defaults: the 31B Omega shape (``omega17_vl_exp``), MAX_BATCH_SIZE 64, MAX_MODEL_LENGTH 8192 and
32768, GPU_MEMORY_UTILIZATION 0.9, a 141 GB H200 (139.8 GiB as the driver reports it), bfloat16.
Prints one line per length and writes OUT_DIR/kv_slots.json with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omega_server.engine.kv_budget import GIB, DeviceMemory, bytes_per_token, plan_slots

from bench.vlmbench import shapes


def weight_bytes(shape: shapes.ModelShape, dtype_bytes: int) -> int:
    """The shape's weights in bytes, counted on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = shapes.build_config(shape, shapes.build_tokenizer(shape.vocab_size))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in model.parameters()) * dtype_bytes


def estimate(args: argparse.Namespace, shape: shapes.ModelShape) -> list[dict[str, Any]]:
    weights = weight_bytes(shape, 2)
    memory = DeviceMemory(
        total=int(args.total_gib * GIB),
        used=weights + int(args.overhead_gib * GIB),
        peak_extra=int(args.peak_gib * GIB),
    )
    rows = []
    for length in args.lengths:
        budget = plan_slots(
            bytes_per_token=bytes_per_token(shape.text, 2),
            memory=memory,
            utilization=args.utilization,
            max_batch_size=args.max_batch_size,
            max_model_length=length,
        )
        rows.append(
            {
                "mode": "estimate",
                "max_model_length": length,
                "slots": budget.slots,
                "token_capacity": budget.token_capacity,
                "weights_gib": round(weights / GIB, 2),
                "budget_gib": round(budget.budget_bytes / GIB, 2),
                "log": budget.describe(),
            }
        )
    return rows


def measure(args: argparse.Namespace, shape: shapes.ModelShape) -> list[dict[str, Any]]:
    import torch
    from omega_server.engine import Engine, EngineConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = shapes.write_checkpoint(shape, Path(tmp) / shape.name)
        for length in args.lengths:
            row: dict[str, Any] = {"mode": "measured", "max_model_length": length}
            try:
                with shapes.random_weights(0):
                    engine = Engine.load(
                        EngineConfig(
                            model_path=str(ckpt),
                            attn_impl="sdpa",
                            dtype="bfloat16",
                            max_batch_size=args.max_batch_size,
                            max_model_length=length,
                            gpu_memory_utilization=args.utilization,
                        )
                    )
                info = engine.info
                row.update(
                    slots=info.kv_slots,
                    token_capacity=info.kv_token_capacity,
                    sized_from_memory=info.kv_sized_from_memory,
                    budget_gib=round(info.kv_budget_bytes / GIB, 2),
                    device=info.device_names,
                )
                engine.shutdown()
                del engine
            except Exception as exc:  # KVCacheTooSmallError included: report it, go on
                row["error"] = f"{type(exc).__name__}: {exc}"
            torch.cuda.empty_cache()
            rows.append(row)
    return rows


def measure_alone(args: argparse.Namespace, length: int) -> list[dict[str, Any]]:
    """``measure`` for one length in a process of its own: an engine shut down in this process does
    not give all of its memory back (a second length in the same process ran out of memory at its
    profiled prefill with the first engine's weights and slots still allocated)."""
    import subprocess

    command = [sys.executable, __file__, "--measure", "--shape", args.shape, "--lengths", str(length)]
    command += ["--max-batch-size", str(args.max_batch_size), "--utilization", str(args.utilization)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return rows or [{"mode": "measured", "max_model_length": length, "error": out.stderr[-2000:]}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="omega17_vl_exp")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--utilization", type=float, default=0.9)
    parser.add_argument("--measure", action="store_true", help="load the engine on the GPU (device run)")
    parser.add_argument("--total-gib", type=float, default=139.8, help="estimate: device size")
    parser.add_argument("--overhead-gib", type=float, default=1.0, help="estimate: CUDA context etc.")
    parser.add_argument("--peak-gib", type=float, default=4.0, help="estimate: profiled prefill peak")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    shape = shapes.get_shape(args.shape)
    if args.measure and len(args.lengths) > 1:
        rows = [row for length in args.lengths for row in measure_alone(args, length)]
    else:
        rows = measure(args, shape) if args.measure else estimate(args, shape)
    for row in rows:
        print(json.dumps(row))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kv_slots.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
