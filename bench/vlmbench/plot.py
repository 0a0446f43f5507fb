"""Plots from result files: output tok/s and TTFT p50 against concurrency, one PNG per device and model,
one line per backend and driver, the peers dashed, the decode roofline dotted (``python -m bench.vlmbench
plot RESULTS... --out DIR``). Only the standard workload's rows are drawn; where several rows share a
line and a concurrency, the last one (in file order) is drawn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.vlmbench.results import PEER_DRIVERS, device_slug

Point = tuple[int, float | None, float | None]  # concurrency, output tok/s, TTFT p50 ms


def label(row: dict[str, Any]) -> str:
    """The line a row belongs to."""
    driver = row.get("driver")
    if driver == "peer":
        return "peer: generate_batch"
    if driver == "peer_http":
        return "peer: transformers serve"
    if driver == "generate":
        return f"generate() ({row.get('backend')})"
    suffix = " compiled" if row.get("compiled") else ""
    return f"{row.get('backend')} {driver}{suffix}"


def series(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[Point]]]:
    """``{(device, model): {line: [(concurrency, tok/s, TTFT p50 ms), ...]}}``, sorted by concurrency;
    the roofline (datasheet bandwidth) is the line ``roofline``."""
    out: dict[tuple[str, str], dict[str, dict[int, Point]]] = {}
    for row in rows:
        if row.get("scenario") not in (None, "standard") or not row.get("output_tokens_per_s"):
            continue
        versions: dict[str, Any] = row["versions"] if isinstance(row.get("versions"), dict) else {}
        key = (str(versions.get("device") or "unknown"), str(row["model"]))
        conc = int(row["concurrency"])
        lines = out.setdefault(key, {})
        lines.setdefault(label(row), {})[conc] = (conc, row["output_tokens_per_s"], row.get("ttft_p50_ms"))
        roof = row.get("roofline_output_tokens_per_s")
        if roof and row.get("driver") not in PEER_DRIVERS and row.get("driver") != "generate":
            lines.setdefault("roofline", {})[conc] = (conc, roof, None)
    return {key: {name: sorted(pts.values()) for name, pts in lines.items()} for key, lines in out.items()}


def plot(rows: Sequence[dict[str, Any]], out_dir: Path, prefix: str = "") -> list[Path]:
    """Draw ``series(rows)`` into ``out_dir``; returns the PNG paths (``<prefix><device>-<model>.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for (device, model), lines in sorted(series(rows).items()):
        fig, (ax_rate, ax_ttft) = plt.subplots(1, 2, figsize=(11.5, 4.4))
        for name, points in lines.items():
            concs = [p[0] for p in points]
            style: dict[str, Any] = {"marker": "o", "linestyle": "-"}
            if name == "roofline":
                style = {"color": "0.6", "linestyle": ":", "marker": ""}
            elif name.startswith("peer"):
                style = {"marker": "s", "linestyle": "--"}
            ax_rate.plot(concs, [p[1] for p in points], label=name, **style)
            ttft = [(p[0], p[2]) for p in points if p[2] is not None]
            if ttft and name != "roofline":
                ax_ttft.plot([c for c, _ in ttft], [v for _, v in ttft], label=name, **style)
        ticks = sorted({p[0] for points in lines.values() for p in points})
        for ax, title in ((ax_rate, "output tok/s (all requests)"), (ax_ttft, "TTFT p50 (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_yscale("log")
            ax.set_xlabel("concurrency")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        ax_rate.legend(fontsize=7, loc="upper left")
        fig.suptitle(f"{model} on {device}")
        fig.tight_layout()
        path = out_dir / f"{prefix}{device_slug(device)}-{model}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
