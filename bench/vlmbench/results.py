"""Result rows (the schema of issue 7), the JSON file, versions and the markdown table."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.vlmbench.stats import CellMetrics

#: Keys every row has (issue 7), in this order; more keys follow them.
REQUIRED_KEYS: tuple[str, ...] = (
    "model",
    "backend",
    "driver",
    "concurrency",
    "output_tokens_per_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "itl_p50_ms",
    "peak_gpu_mem_gb",
    "baseline_output_tokens_per_s",
    "roofline_output_tokens_per_s",
)
DRIVERS: tuple[str, ...] = ("engine", "http", "generate")
README_BEGIN = "<!-- results:begin -->"
README_END = "<!-- results:end -->"


def make_row(
    *,
    model: str,
    backend: str,
    driver: str,
    concurrency: int,
    metrics: CellMetrics | None,
    peak_gpu_mem_gb: float | None,
    baseline_output_tokens_per_s: float | None,
    roofline_output_tokens_per_s: float | None,
    versions: dict[str, Any],
    command: str,
    **extra: Any,
) -> dict[str, Any]:
    """One row: the required keys first, then the cell's other metrics, ``extra``, versions and command."""
    if driver not in DRIVERS:
        raise ValueError(f"driver must be one of {DRIVERS}, got {driver!r}")
    m = asdict(metrics) if metrics is not None else {}
    row: dict[str, Any] = {
        "model": model,
        "backend": backend,
        "driver": driver,
        "concurrency": int(concurrency),
        "output_tokens_per_s": m.get("output_tokens_per_s"),
        "ttft_p50_ms": m.get("ttft_p50_ms"),
        "ttft_p95_ms": m.get("ttft_p95_ms"),
        "itl_p50_ms": m.get("itl_p50_ms"),
        "peak_gpu_mem_gb": None if peak_gpu_mem_gb is None else round(peak_gpu_mem_gb, 2),
        "baseline_output_tokens_per_s": baseline_output_tokens_per_s,
        "roofline_output_tokens_per_s": None
        if roofline_output_tokens_per_s is None
        else round(roofline_output_tokens_per_s, 1),
    }
    for key, value in m.items():
        row.setdefault(key, value)
    rate = row.get("decode_tokens_per_s_p50") if driver != "generate" else row["output_tokens_per_s"]
    roof = row["roofline_output_tokens_per_s"]
    if rate and roof:
        # decode speed against the roofline at this batch size: per-sequence rate x batch / roofline
        batch_rate = rate * concurrency if driver != "generate" else rate
        row["roofline_fraction"] = round(batch_rate / roof, 3)
    for key, value in extra.items():
        row.setdefault(key, value)
    row["versions"] = versions
    row["command"] = command
    return row


def check_row(row: dict[str, Any]) -> None:
    """Raise ValueError when a row lacks a required key or has a wrong type."""
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"row lacks {missing}")
    if not isinstance(row["concurrency"], int) or row["concurrency"] < 1:
        raise ValueError("concurrency must be a positive int")
    for key in REQUIRED_KEYS[4:]:
        value = row[key]
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number or null, got {value!r}")
    if "versions" not in row or "command" not in row:
        raise ValueError("row lacks versions or command")


def device_slug(name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``h100-80gb-hbm3`` (file-name safe); ``cpu`` stays ``cpu``."""
    slug = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.IGNORECASE).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    return slug or "unknown"


def results_path(directory: str | Path, device_name: str, date: str) -> Path:
    """``<dir>/<device>-<yyyy-mm-dd>.json``."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"date must be yyyy-mm-dd, got {date!r}")
    return Path(directory) / f"{device_slug(device_name)}-{date}.json"


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write the rows (a JSON list), checking each; returns the path."""
    for row in rows:
        check_row(row)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps(list(rows), indent=2) + "\n")
    tmp.replace(target)
    return target


def read_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of several result files, in order."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        rows.extend(data if isinstance(data, list) else data.get("rows", []))
    return rows


def select_rows(
    rows: Sequence[dict[str, Any]], where: Sequence[str] = (), complete_only: bool = False
) -> list[dict[str, Any]]:
    """Rows matching every ``KEY=VALUE`` (``a.b`` looks into nested dicts; ``VALUE`` may be ``x|y``)."""
    out = []
    for row in rows:
        if complete_only and row.get("complete") is False:
            continue
        ok = True
        for cond in where:
            key, _, value = cond.partition("=")
            current: Any = row
            for part in key.split("."):
                current = current.get(part) if isinstance(current, dict) else None
            if str(current) not in value.split("|"):
                ok = False
                break
        if ok:
            out.append(row)
    return out


def versions() -> dict[str, Any]:
    """Python, torch (+CUDA), transformers, tokenizers, flash-attn, GPU and driver, git revision."""
    out: dict[str, Any] = {"python": platform.python_version()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as exc:  # pragma: no cover - torch is always there where this runs
        out["torch"] = f"unavailable: {exc}"
    for module in ("transformers", "tokenizers"):
        try:
            out[module] = __import__(module).__version__
        except Exception:
            out[module] = None
    from omega_server import attention

    out["flash_attn"] = attention.flash_attn_version()
    out["gpu_driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    out["git"] = _run(["git", "rev-parse", "--short", "HEAD"]) or os.environ.get("BENCH_GIT_REV")
    return out


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = proc.stdout.strip().splitlines()
    return text[0] if proc.returncode == 0 and text else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return str(value)


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("backend", "backend"),
    ("driver", "driver"),
    ("decode_path", "decode path"),
    ("concurrency", "conc"),
    ("output_tokens_per_s", "out tok/s"),
    ("per_request_output_tokens_per_s", "per-req tok/s"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p95_ms", "TTFT p95 ms"),
    ("itl_p50_ms", "ITL p50 ms"),
    ("itl_p95_ms", "ITL p95 ms"),
    ("peak_gpu_mem_gb", "peak GB"),
    ("baseline_output_tokens_per_s", "generate() b4 tok/s"),
    ("roofline_output_tokens_per_s", "roofline tok/s"),
    ("roofline_fraction", "of roofline"),
    ("output_tokens_per_request", "out tok/req"),
    ("completed", "done"),
    ("note", "note"),
)


def decode_path(row: dict[str, Any]) -> str:
    """How tokens were decoded: ``generate()``, or the engine's KV cache (``+graphs`` with CUDA graphs,
    ``+compile`` with the torch.compile'd decode step, ``+gqa`` with the packed one-token attention,
    ``+fusedmoe`` with the fused MoE experts)."""
    if row.get("driver") == "generate":
        return "generate()"
    cache = row.get("kv_cache") or "dynamic"  # rows from before the engine reported it: dynamic only
    path = f"{cache}+graphs" if row.get("cuda_graphs") else str(cache)
    if row.get("compiled"):
        path += "+compile"
    if row.get("gqa_decode"):
        path += "+gqa"
    if row.get("experts_implementation") == "omega_fused_decode":
        path += "+fusedmoe"
    return path


def row_note(row: dict[str, Any]) -> str | None:
    """A short remark for the table: the error, or that the cell hit its time limit."""
    error = row.get("error") or row.get("first_error")
    if error:
        text = str(error).replace("|", "/").replace("\n", " ")
        return text if len(text) <= 80 else text[:77] + "..."
    if row.get("complete") is False:
        return "time limit: partial"
    return None


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table (one line per row, in the given order)."""
    head = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = row.get(key)
            if key == "note":
                value = row_note(row)
            if key == "decode_path":
                value = decode_path(row)
            if key == "completed" and value is not None:
                value = f"{value}/{row.get('requests', '?')}"
            if key == "roofline_fraction" and isinstance(value, float):
                value = f"{value:.0%}"
            cells.append(_fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_between_markers(text: str, block: str) -> str:
    """Put ``block`` between the results markers of ``text`` (appending the markers when absent)."""
    wrapped = f"{README_BEGIN}\n{block.rstrip()}\n{README_END}"
    if README_BEGIN in text and README_END in text:
        start = text.index(README_BEGIN)
        end = text.index(README_END) + len(README_END)
        return text[:start] + wrapped + text[end:]
    return text.rstrip() + "\n\n" + wrapped + "\n"
