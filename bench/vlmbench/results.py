"""Result rows (the schema of issue 7), the JSON file, its name, and the versions a row records."""

from __future__ import annotations

import hashlib
import importlib.metadata
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
#: engine/http: ours; generate: plain generate() b4; peer: transformers' continuous batching
#: (generate_batch); peer_http: transformers serve over HTTP
DRIVERS: tuple[str, ...] = ("engine", "http", "generate", "peer", "peer_http")
PEER_DRIVERS: tuple[str, ...] = ("peer", "peer_http")


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
    # decode speed against the roofline at this batch size: per-sequence rate x batch / roofline
    batch_rate = (rate * concurrency if driver != "generate" else rate) if rate else None
    roof = row["roofline_output_tokens_per_s"]
    if batch_rate and roof:
        row["roofline_fraction"] = round(batch_rate / roof, 3)
    copy_roof = extra.get("roofline_copy_output_tokens_per_s")
    if batch_rate and copy_roof:
        row["roofline_copy_fraction"] = round(batch_rate / copy_roof, 3)
    for key, value in extra.items():
        if key == "roofline_copy_output_tokens_per_s" and value is not None:
            value = round(value, 1)
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


def results_path(directory: str | Path, device_name: str, date: str, tag: str = "") -> Path:
    """``<dir>/<device>-<yyyy-mm-dd>[-<tag>].json`` (an H200 gives ``h200-...``)."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"date must be yyyy-mm-dd, got {date!r}")
    suffix = f"-{device_slug(tag)}" if tag else ""
    return Path(directory) / f"{device_slug(device_name)}-{date}{suffix}.json"


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
    """Python, torch (+CUDA), transformers, tokenizers, flash-attn, Triton, GPU and driver, and the commit.

    ``git`` is ``BENCH_COMMIT`` when set (the device's copy of the tree may carry a stale ``.git``), else
    ``git rev-parse``; ``git_dirty`` says whether the tree differs from that commit, and
    ``source_digest`` (bench + server sources) identifies the code that ran either way.
    """
    out: dict[str, Any] = {"python": platform.python_version()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as exc:  # pragma: no cover - torch is always there where this runs
        out["torch"] = f"unavailable: {exc}"
    for module in ("transformers", "tokenizers", "triton"):
        out[module] = _dist_version(module)
    out["flash_attn"] = _dist_version("flash_attn") or _dist_version("flash-attn")
    out["gpu_driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    env_commit = os.environ.get("BENCH_COMMIT") or os.environ.get("BENCH_GIT_REV")
    out["git"] = env_commit or _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    out["git_source"] = "BENCH_COMMIT" if env_commit else "git rev-parse"
    status = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], first_line=False)
    out["git_dirty"] = None if status is None else bool(status.strip())
    out["source_digest"] = source_digest()
    return out


ROOT = Path(__file__).resolve().parents[2]


def source_digest(root: Path = ROOT) -> str:
    """sha256 (first 12 hex digits) over the paths and contents of ``bench/**/*.py`` and
    ``server/src/**/*.py``: the same code gives the same digest on any machine."""
    h = hashlib.sha256()
    files = sorted(
        p
        for sub in ("bench", "server/src")
        for p in (root / sub).rglob("*.py")
        if "__pycache__" not in p.parts
    )
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:  # a package put on PYTHONPATH without its metadata (the device's flash-attn)
        return str(__import__(name).__version__)
    except Exception:
        return None


def _run(cmd: list[str], first_line: bool = True) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    if not first_line:
        return proc.stdout
    text = proc.stdout.strip().splitlines()
    return text[0] if text else None
