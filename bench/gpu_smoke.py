"""GPU smoke test and first throughput figures for the omega-vlm-server engine (issue 3).

Run on the accelerator machine (one H100), from the repository root:

    python bench/gpu_smoke.py --out OUT_DIR --flash-site DIR_WITH_FLASH_ATTN

Steps (each in its own child process, so a failed CUDA context or a flash import stays contained):
  1. flash check: a tiny Qwen2.5-VL checkpoint loaded with ATTN_IMPL=flash_attention_2 in bf16 on the
     GPU, once with the flash-attn wheel on PYTHONPATH (expect attn=flash_attention_2) and once
     without it (expect the in-process fallback to sdpa, with the error reported). Engine.info is what
     /health serves; when fastapi/uvicorn import, the real server's /health is read as well.
  2. throughput: a random-weight model with Qwen2.5-VL-7B's configuration, built on the GPU in bf16
     (nothing downloaded) and saved once; then for each backend Engine.load() from that directory
     (load time), and the engine alone at concurrency 1, 4 and 16 (max batch 16): 512 prompt tokens
     with one 448x448 image, N (default 128) new tokens with EOS ignored, greedy. Also plain generate() at batch 1
     on the same model for comparison.
Prints a table at the end and writes OUT_DIR/gpu_smoke.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "server" / "src"))

PROMPT_TOKENS = 512
IMAGE_SIDE = 448


# --------------------------------------------------------------------------- helpers (child side)


def _env_report() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def _chat(text_chars: int, seed: int = 0) -> Any:
    from omega_server.engine import GenerationRequest, SamplingParams
    from PIL import Image

    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (40 + seed, 120, 200))
    text = ("The quick brown fox jumps over the lazy dog. " * 64)[:text_chars]
    return lambda max_tokens: GenerationRequest(
        messages=[
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}
        ],
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
    )


def _fit_prompt(engine: Any, target: int) -> Any:
    """A request factory whose prompt is exactly ``target`` tokens (byte-level tokenizer: 1 char = 1 token)."""
    base = engine.prepare(_chat(0)(1)).prompt_tokens
    make = _chat(max(0, target - base))
    got = engine.prepare(make(1)).prompt_tokens
    return make, got


async def _run_concurrent(engine: Any, reqs: list[Any]) -> dict[str, Any]:
    prepared = [engine.prepare(r) for r in reqs]
    start = time.perf_counter()
    firsts: list[float] = []
    ends: list[float] = []
    counts: list[int] = []

    async def one(p: Any) -> None:
        first = None
        n = 0
        async for out in engine.stream(p):
            if first is None:
                first = time.perf_counter()
            n += len(out.token_ids)
        firsts.append((first or time.perf_counter()) - start)
        ends.append(time.perf_counter() - start)
        counts.append(n)

    await asyncio.gather(*(one(p) for p in prepared))
    wall = max(ends)
    total = sum(counts)
    decode_time = wall - max(firsts)
    return {
        "concurrency": len(reqs),
        "output_tokens": total,
        "wall_s": round(wall, 3),
        "output_tokens_per_s": round(total / wall, 1),
        "decode_tokens_per_s": round((total - len(reqs)) / decode_time, 1) if decode_time > 0 else None,
        "per_request_tokens_per_s": round(
            statistics.mean(c / e for c, e in zip(counts, ends, strict=True)), 1
        ),
        "ttft_p50_ms": round(1000 * statistics.median(firsts), 1),
        "ttft_max_ms": round(1000 * max(firsts), 1),
    }


def child_flash_check(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from omega_server import tiny
    from omega_server.engine import Engine, EngineConfig

    out: dict[str, Any] = {"env": _env_report()}
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny.build("qwen2_5_vl", Path(tmp) / "tiny")
        eng = Engine.load(EngineConfig(model_path=str(path), attn_impl="flash_attention_2", dtype="bfloat16"))
        info = eng.info
        make = _chat(40)
        res = asyncio.run(_run_concurrent(eng, [make(8) for _ in range(3)]))
        eng.shutdown()
        out["engine_info"] = {
            k: getattr(info, k)
            for k in (
                "attn",
                "attn_requested",
                "flash_attn",
                "dtype",
                "devices",
                "device_names",
                "load_seconds",
            )
        }
        out["generated_tokens"] = res["output_tokens"]
        out["health"] = _server_health(path)
    return out


def _server_health(path: Path) -> Any:
    """Start the real server (python -m omega_server) on the tiny checkpoint and read /health."""
    try:
        import fastapi  # noqa: F401
        import httpx
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"skipped: {exc}"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MODEL_PATH": str(path),
        "ATTN_IMPL": "flash_attention_2",
        "DTYPE": "bfloat16",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "SERVED_MODEL_NAME": "tiny",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "omega_server"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                return f"server exited {proc.returncode}: {proc.stdout.read().decode()[-2000:] if proc.stdout else ''}"
            time.sleep(0.5)
        return "timeout waiting for /health"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def child_build_7b(args: argparse.Namespace) -> dict[str, Any]:
    """Random Qwen2.5-VL-7B-shaped checkpoint, weights created on the GPU in bf16, saved to args.model."""
    import torch
    from gpu_profile import config_and_processor  # type: ignore[import-not-found]
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg, processor = config_and_processor()
    started = time.perf_counter()
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    built = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    model.save_pretrained(args.model)
    processor.save_pretrained(args.model)
    saved = time.perf_counter() - started
    return {"params_b": round(params / 1e9, 2), "build_s": round(built, 2), "save_s": round(saved, 2)}


def child_throughput(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from omega_server.engine import Engine, EngineConfig

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    eng = Engine.load(
        EngineConfig(
            model_path=args.model,
            attn_impl=args.backend,
            dtype="bfloat16",
            max_batch_size=max(args.concurrency),
        )
    )
    info = eng.info
    out: dict[str, Any] = {
        "backend": info.attn,
        "requested": info.attn_requested,
        "flash_attn": info.flash_attn,
        "load_s": info.load_seconds,
        "kv_cache": info.kv_cache,
        "cuda_graphs": info.cuda_graphs,
        "env": _env_report(),
    }
    make, prompt = _fit_prompt(eng, PROMPT_TOKENS)
    out["prompt_tokens"] = prompt
    rows = []
    for c in args.concurrency:
        row = asyncio.run(_run_concurrent(eng, [make(args.new_tokens) for _ in range(c)]))
        row["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1) if cuda else 0.0
        rows.append(row)
        print(json.dumps(row), flush=True)
    out["rows"] = rows
    graphs = getattr(eng._runner, "graphs", None)
    out["graph_error"] = getattr(graphs, "error", None)
    out["graphs_captured"] = len(getattr(graphs, "graphs", {}))
    # correctness on the real shape: engine greedy == generate() greedy for the first tokens
    model = eng._loaded.model
    p = eng.prepare(make(32))
    engine_tokens = [t for o in eng.generate_sync(p, timeout=300) for t in o.token_ids]
    eng.shutdown()
    inputs = {k: v.to(model.device) for k, v in p.inputs.items()}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        ref = model.generate(**inputs, max_new_tokens=32, do_sample=False)[0, p.prompt_tokens :].tolist()
        sync()
        started = time.perf_counter()
        model.generate(
            **inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False
        )
        sync()
        gen_s = time.perf_counter() - started
    out["greedy_matches_generate_32"] = engine_tokens == ref
    out["first_mismatch"] = next(
        (i for i, (a, b) in enumerate(zip(engine_tokens, ref, strict=False)) if a != b), None
    )
    out["generate_b1_tokens_per_s"] = round(args.new_tokens / gen_s, 1)
    return out


CHILDREN = {"flash": child_flash_check, "build7b": child_build_7b, "throughput": child_throughput}


# --------------------------------------------------------------------------- driver


def _child(step: str, extra: list[str], env: dict[str, str], timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", step, *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = round(time.perf_counter() - started, 1)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["child_wall_s"] = wall
            return result
    return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:], "stdout": proc.stdout[-2000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=sorted(CHILDREN))
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--flash-site", default=None, help="directory where the flash-attn wheel is installed")
    ap.add_argument(
        "--extra-site", default=None, help="directory with the server's own dependencies, if needed"
    )
    ap.add_argument("--model", default="/tmp/qwen2_5_vl_7b_random")
    ap.add_argument("--backend", default="sdpa")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    ap.add_argument("--skip-7b", action="store_true")
    ap.add_argument("--skip-flash-check", action="store_true")
    args = ap.parse_args()

    if args.child:
        result = CHILDREN[args.child](args)
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base_env["PYTHONUNBUFFERED"] = "1"
    base_env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    src = str(ROOT / "server" / "src")
    flash_env = {
        **base_env,
        "PYTHONPATH": os.pathsep.join(p for p in (args.flash_site, src, args.extra_site) if p),
    }
    plain_env = {**base_env, "PYTHONPATH": os.pathsep.join(p for p in (src, args.extra_site) if p)}
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }

    def save() -> None:
        (out_dir / "gpu_smoke.json").write_text(json.dumps(report, indent=2, default=str))

    if not args.skip_flash_check:
        report["flash_with_wheel"] = _child("flash", [], flash_env, 180)
        save()
        print("flash with wheel:", json.dumps(report["flash_with_wheel"], default=str)[:3000], flush=True)
        report["flash_without_wheel"] = _child("flash", [], plain_env, 180)
        save()
        print(
            "flash without wheel:", json.dumps(report["flash_without_wheel"], default=str)[:3000], flush=True
        )

    if not args.skip_7b:
        report["build_7b"] = _child("build7b", ["--model", args.model], plain_env, 240)
        save()
        print("build 7b:", report["build_7b"], flush=True)
        conc = ",".join(map(str, args.concurrency))
        common = ["--model", args.model, "--new-tokens", str(args.new_tokens), "--concurrency", conc]
        report["flash_attention_2"] = _child(
            "throughput", [*common, "--backend", "flash_attention_2"], flash_env, 600
        )
        print("flash_attention_2:", json.dumps(report["flash_attention_2"], default=str)[:3000], flush=True)
        report["sdpa"] = _child("throughput", [*common, "--backend", "sdpa"], plain_env, 300)
        print("sdpa:", json.dumps(report["sdpa"], default=str)[:3000], flush=True)

    save()
    _table(report)
    return 0


def _table(report: dict[str, Any]) -> None:
    print("\n== flash check (tiny Qwen2.5-VL, bf16, ATTN_IMPL=flash_attention_2)")
    for key in ("flash_with_wheel", "flash_without_wheel"):
        r = report.get(key, {})
        info = r.get("engine_info", {})
        health = r.get("health")
        h = (
            {k: health.get(k) for k in ("attn", "attn_requested", "flash_attn")}
            if isinstance(health, dict)
            else health
        )
        print(f"{key}: engine attn={info.get('attn')} flash_attn={info.get('flash_attn')} | /health: {h}")
    print("\n== Qwen2.5-VL-7B shape, random bf16 weights, 512 prompt tokens (1 image 448x448), EOS ignored")
    print(
        f"{'backend':18} {'load_s':>7} {'conc':>5} {'tok/s':>8} {'decode tok/s':>13} {'per-req':>8} {'ttft p50 ms':>12} {'ttft max':>9} {'peak GB':>8}"
    )
    for key in ("flash_attention_2", "sdpa"):
        r = report.get(key)
        if not r or "rows" not in r:
            if r:
                print(key, "ERROR", json.dumps(r)[:1500])
            continue
        for row in r["rows"]:
            print(
                f"{r['backend']:18} {r.get('kv_cache', '') + ('+graphs' if r.get('cuda_graphs') else ''):>12} {r['load_s']:>7} {row['concurrency']:>5} {row['output_tokens_per_s']:>8} "
                f"{row['decode_tokens_per_s']!s:>13} {row['per_request_tokens_per_s']:>8} {row['ttft_p50_ms']:>12} "
                f"{row['ttft_max_ms']:>9} {row['peak_gpu_mem_gb']:>8}"
            )
        print(
            f"  plain generate() b1: {r['generate_b1_tokens_per_s']} tok/s; engine greedy == generate() (32 tokens): "
            f"{r['greedy_matches_generate_32']} (first mismatch {r['first_mismatch']})"
        )


if __name__ == "__main__":
    sys.exit(main())
