"""``python -m bench.vlmbench run ...`` (the benchmark), ``table FILES`` (markdown), ``plot FILES`` (PNGs),
``merge FILES`` and ``bandwidth`` (the GPU's datasheet and copy bandwidth).

Run on the accelerator machine from the repository root with ``server/src`` importable, e.g.:

    PYTHONPATH=server/src:. python -m bench.vlmbench run --models omega17_vl_exp \\
        --backends sdpa,flash_attention_2 --cells http:1,http:4,http:64 \\
        --workloads vision4x1024,vision1x1792 --peer generate_batch,serve --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from bench.vlmbench.results import read_rows, select_rows, write_rows
from bench.vlmbench.table import markdown_table, replace_between_markers, sort_rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _cells(text: str) -> list[tuple[str, int]]:
    out = []
    for item in _names(text):
        driver, _, conc = item.partition(":")
        if driver not in ("engine", "http", "generate") or not conc.isdigit():
            raise argparse.ArgumentTypeError(f"cells are driver:concurrency, got {item!r}")
        out.append((driver, int(conc)))
    return out


def _workloads(text: str) -> list[tuple[str, int]]:
    """``vision4x1024,prefix:16,json_schema:1`` -> cells; a name alone takes its default concurrencies."""
    from bench.vlmbench.scenarios import get_scenario

    out: list[tuple[str, int]] = []
    for item in _names(text):
        name, _, conc = item.partition(":")
        try:
            scenario = get_scenario(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if conc and not conc.isdigit():
            raise argparse.ArgumentTypeError(f"workloads are name[:concurrency], got {item!r}")
        out.extend([(name, int(conc))] if conc else [(name, c) for c in scenario.default_concurrency])
    return out


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    ap = argparse.ArgumentParser(prog="python -m bench.vlmbench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the benchmark matrix")
    r.add_argument("--models", type=_names, default=["omega17_vl_exp", "qwen2_5_vl_7b"])
    r.add_argument("--backends", type=_names, default=["sdpa", "flash_attention_2"])
    r.add_argument("--drivers", type=_names, default=["engine", "http"])
    r.add_argument("--concurrency", type=_ints, default=[1, 4, 16, 64])
    r.add_argument("--prompt-tokens", type=int, default=512)
    r.add_argument("--output-tokens", type=int, default=512)
    r.add_argument("--image-size", type=int, default=448)
    r.add_argument("--no-baseline", action="store_true", help="skip the plain generate() baseline")
    r.add_argument("--baseline-batch", type=int, default=4)
    r.add_argument(
        "--baseline-tokens", type=int, default=None, help="new tokens for generate() (default: output)"
    )
    r.add_argument("--cell-time-limit", type=float, default=120.0, help="seconds per cell before cancelling")
    r.add_argument("--deadline", type=float, default=None, help="start no cell after this many seconds")
    r.add_argument(
        "--max-batch-size", type=int, default=None, help="engine MAX_BATCH_SIZE (default: max conc)"
    )
    r.add_argument(
        "--max-model-length",
        type=int,
        default=None,
        help="engine MAX_MODEL_LENGTH (default: what the cells need)",
    )
    r.add_argument("--no-standard", dest="standard", action="store_false", help="skip the standard cells")
    r.add_argument(
        "--workloads",
        type=_workloads,
        default=[],
        help="extra workloads over HTTP, name[:concurrency]: vision4x1024, vision1x1792, prefix, burst, json_schema",
    )
    r.add_argument(
        "--peer",
        type=_names,
        default=[],
        help="peers, once per model: generate_batch (continuous batching), serve",
    )
    r.add_argument(
        "--peer-concurrency", type=_ints, default=None, help="default: the standard cells' concurrencies"
    )
    r.add_argument("--peer-serve-concurrency", type=_ints, default=[1, 4])
    r.add_argument(
        "--peer-tokens", type=int, default=64, help="output tokens per request in a generate_batch cell"
    )
    r.add_argument(
        "--peer-serve-tokens", type=int, default=32, help="output tokens per request over transformers serve"
    )
    r.add_argument(
        "--peer-cb-config",
        type=json.loads,
        default=None,
        help="ContinuousBatchingConfig fields as JSON (default: its own)",
    )
    r.add_argument(
        "--bandwidth", type=float, default=None, help="roofline bandwidth, bytes/s (default: datasheet)"
    )
    r.add_argument(
        "--copy-gib", type=float, default=2.0, help="buffer of the copy measured at the start, GiB"
    )
    r.add_argument("--tag", default="", help="results file <device>-<date>-<tag>.json")
    r.add_argument("--device", default="auto")
    r.add_argument("--dtype", default="bfloat16")
    r.add_argument("--out", type=Path, default=Path("bench/results"))
    r.add_argument("--results-file", type=Path, default=None)
    r.add_argument("--workdir", type=Path, default=Path("/tmp/vlmbench"))
    r.add_argument(
        "--cells",
        type=_cells,
        default=None,
        help="explicit cells instead of the plan, e.g. http:1,http:4,engine:16 (generate:4 = baseline)",
    )
    r.add_argument("--profile", type=_ints, default=[], help="decode-step profiles at these batch sizes")
    r.add_argument("--compile", action="store_true", help="torch.compile the engine's decode step")
    r.add_argument(
        "--no-fast-decode",
        dest="fast_decode",
        action="store_false",
        help="EngineConfig.fast_decode=False: transformers' own decode attention and MoE experts",
    )
    r.add_argument(
        "--isolate",
        action="store_true",
        help="run each (model, backend) in its own process, so GPU memory is surely freed between them",
    )
    m = sub.add_parser("merge", help="concatenate result files into one (e.g. two runs of one day)")
    m.add_argument("files", nargs="+", type=Path)
    m.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("table", help="print the markdown table of result files")
    t.add_argument("files", nargs="+", type=Path)
    t.add_argument("--readme", type=Path, default=None, help="also write it between the README's markers")
    t.add_argument(
        "--section",
        default=None,
        help="the README's markers of this section (e.g. h200), not the H100 history's",
    )
    t.add_argument(
        "--where",
        action="append",
        default=[],
        help="KEY=VALUE filter on rows (repeatable; versions.git works)",
    )
    t.add_argument("--complete-only", action="store_true", help="leave out cells cut by their time limit")
    t.add_argument("--sorted", action="store_true", help="order by model, backend, concurrency, driver")
    p = sub.add_parser("plot", help="output tok/s and TTFT p50 against concurrency, PNG per device and model")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prefix", default="", help="file name prefix")
    p.add_argument("--where", action="append", default=[], help="KEY=VALUE filter on rows (repeatable)")
    p.add_argument("--complete-only", action="store_true")
    b = sub.add_parser("bandwidth", help="print the GPU's datasheet bandwidth and a measured copy (JSON)")
    b.add_argument("--copy-gib", type=float, default=2.0)
    b.add_argument("--reps", type=int, default=10)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    if args.cmd == "merge":
        rows = read_rows(args.files)
        write_rows(args.out, rows)
        print(f"{len(rows)} rows -> {args.out}")
        return 0
    if args.cmd == "table":
        rows = select_rows(read_rows(args.files), args.where, args.complete_only)
        if args.sorted:
            rows = sort_rows(rows)
        table = markdown_table(rows)
        print(table)
        if args.readme is not None:
            args.readme.write_text(replace_between_markers(args.readme.read_text(), table, args.section))
        return 0
    if args.cmd == "plot":
        from bench.vlmbench.plot import plot

        for path in plot(
            select_rows(read_rows(args.files), args.where, args.complete_only), args.out, args.prefix
        ):
            print(path)
        return 0
    if args.cmd == "bandwidth":
        from bench.vlmbench.bandwidth import measure
        from bench.vlmbench.run import _device_name

        name, device = _device_name("auto")
        size = int(args.copy_gib * (1 << 30)) if device == "cuda" else 64 << 20
        print(json.dumps(measure(name, device, size, args.reps), indent=2))
        return 0

    command = " ".join(
        shlex.quote(a) for a in [sys.executable, "-m", "bench.vlmbench", *(argv or sys.argv[1:])]
    )
    if args.isolate and len(args.models) * (len(args.backends) + bool(args.peer)) > 1:
        return _isolated(args, command)

    from bench.vlmbench.context import RunConfig
    from bench.vlmbench.run import run
    from bench.vlmbench.workload import Workload

    def log(line: str) -> None:
        print(line, flush=True)

    cfg = RunConfig(
        models=args.models,
        out_dir=args.out,
        workdir=args.workdir,
        backends=args.backends,
        drivers=args.drivers,
        concurrency=args.concurrency,
        workload=Workload(args.prompt_tokens, args.output_tokens, args.image_size),
        baseline=not args.no_baseline,
        baseline_batch=args.baseline_batch,
        baseline_tokens=args.baseline_tokens,
        cell_time_limit_s=args.cell_time_limit,
        deadline_s=args.deadline,
        device=args.device,
        dtype=args.dtype,
        command=os.environ.get("VLMBENCH_COMMAND", command),
        max_batch_size=args.max_batch_size,
        max_model_length=args.max_model_length,
        results_file=args.results_file,
        tag=args.tag,
        cells=args.cells,
        standard=args.standard,
        workloads=args.workloads,
        peer=args.peer,
        peer_concurrency=args.peer_concurrency,
        peer_serve_concurrency=args.peer_serve_concurrency,
        peer_tokens=args.peer_tokens,
        peer_serve_tokens=args.peer_serve_tokens,
        peer_cb_config=args.peer_cb_config,
        bandwidth=args.bandwidth,
        copy_bytes=int(args.copy_gib * (1 << 30)),
        profile_batches=args.profile,
        compile=args.compile,
        fast_decode=args.fast_decode,
        log=log,
    )
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    rows = run(cfg)
    print(markdown_table(rows), flush=True)
    return 0


def _child_argv(
    args: argparse.Namespace, model: str, backend: str | None, part: Path, deadline: float | None
) -> list[str]:
    """The arguments of one child: (model, backend) for our engine, or (model, None) for the peer."""
    out = [
        "run",
        f"--models={model}",
        f"--backends={backend or ''}",
        f"--drivers={','.join(args.drivers)}",
        f"--concurrency={','.join(map(str, args.concurrency))}",
        f"--prompt-tokens={args.prompt_tokens}",
        f"--output-tokens={args.output_tokens}",
        f"--image-size={args.image_size}",
        f"--baseline-batch={args.baseline_batch}",
        f"--cell-time-limit={args.cell_time_limit}",
        f"--device={args.device}",
        f"--dtype={args.dtype}",
        f"--out={args.out}",
        f"--workdir={args.workdir}",
        f"--results-file={part}",
        f"--copy-gib={args.copy_gib}",
    ]
    if backend is None:  # the peer's child
        out += [f"--peer={','.join(args.peer)}", "--no-standard"]
        out += [f"--peer-serve-concurrency={','.join(map(str, args.peer_serve_concurrency))}"]
        out += [f"--peer-tokens={args.peer_tokens}", f"--peer-serve-tokens={args.peer_serve_tokens}"]
        concs = args.peer_concurrency or sorted(
            {c for d, c in args.cells if d in ("engine", "http")} if args.cells else set(args.concurrency)
        )
        out.append(f"--peer-concurrency={','.join(map(str, concs))}")
        if args.peer_cb_config is not None:
            out.append(f"--peer-cb-config={json.dumps(args.peer_cb_config)}")
    else:
        if not args.standard:
            out.append("--no-standard")
        if args.workloads:
            out.append("--workloads=" + ",".join(f"{n}:{c}" for n, c in args.workloads))
    if args.bandwidth is not None:
        out.append(f"--bandwidth={args.bandwidth}")
    if args.max_model_length is not None:
        out.append(f"--max-model-length={args.max_model_length}")
    if args.no_baseline:
        out.append("--no-baseline")
    if args.compile:
        out.append("--compile")
    if not args.fast_decode:
        out.append("--no-fast-decode")
    if args.cells is not None:
        out.append("--cells=" + ",".join(f"{d}:{c}" for d, c in args.cells))
    if args.profile:
        out.append("--profile=" + ",".join(map(str, args.profile)))
    if args.baseline_tokens is not None:
        out.append(f"--baseline-tokens={args.baseline_tokens}")
    if args.max_batch_size is not None:
        out.append(f"--max-batch-size={args.max_batch_size}")
    if deadline is not None:
        out.append(f"--deadline={deadline:.0f}")
    return out


def _isolated(args: argparse.Namespace, command: str) -> int:
    """One child process per (model, backend), then one for the peer of each model (so GPU memory is
    surely freed between them); the rows are merged into one results file."""
    import subprocess
    import time

    from bench.vlmbench.results import results_path

    started = time.monotonic()
    parts_dir = args.workdir / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    final: Path | None = args.results_file
    children = [(m, b) for m in args.models for b in [*args.backends, *([None] if args.peer else [])]]
    for model, backend in children:
        deadline = None if args.deadline is None else args.deadline - (time.monotonic() - started)
        if deadline is not None and deadline < 30:
            print(f"[{model}/{backend or 'peer'}] skipped: out of time", flush=True)
            continue
        part = parts_dir / f"{model}-{backend or 'peer'}.json"
        part.unlink(missing_ok=True)
        env = {**os.environ, "VLMBENCH_COMMAND": command}
        child = [
            sys.executable,
            "-m",
            "bench.vlmbench",
            *_child_argv(args, model, backend, part, deadline),
        ]
        code = subprocess.run(child, env=env, check=False).returncode
        if code != 0:
            print(f"[{model}/{backend or 'peer'}] child exited {code}", flush=True)
        if part.exists():
            rows.extend(read_rows([part]))
        if rows:
            if final is None:
                versions = rows[0].get("versions")
                device = versions.get("device", "unknown") if isinstance(versions, dict) else "unknown"
                final = results_path(
                    args.out, str(device), time.strftime("%Y-%m-%d", time.gmtime()), args.tag
                )
            write_rows(final, rows)
    print(f"wrote {len(rows)} rows to {final}", flush=True)
    print(markdown_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
