"""Result rows -> the markdown tables of bench/README.md (ours / peer ratios, both rooflines).

The base columns are those of issue 7. Columns appear only when some row has their data, so the tables of
older result files (the H100 runs) come out as they always did: ``workload`` (rows of an extra workload),
``vs peer`` / ``vs serve`` (our output tok/s over transformers' continuous batching / transformers serve,
same model, concurrency, device and token counts), the bandwidths (datasheet / measured copy, TB/s) and
the fraction of the copy roofline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.vlmbench.results import PEER_DRIVERS

README_BEGIN = "<!-- results:begin -->"
README_END = "<!-- results:end -->"


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

#: (key, title, the base column it follows, whether a row set needs it)
OPTIONAL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scenario", "workload", "driver"),
    ("vs_peer", "vs peer", "output_tokens_per_s"),
    ("vs_serve", "vs serve", "vs_peer"),
    ("bandwidth_tbs", "BW TB/s sheet/copy", "roofline_output_tokens_per_s"),
    ("roofline_copy_fraction", "of copy roofline", "roofline_fraction"),
)


def _needed(key: str, rows: Sequence[dict[str, Any]]) -> bool:
    if key == "scenario":
        return any(r.get("scenario") not in (None, "standard") for r in rows)
    if key == "vs_peer":
        return any(r.get("driver") == "peer" for r in rows)
    if key == "vs_serve":
        return any(r.get("driver") == "peer_http" for r in rows)
    if key == "bandwidth_tbs":
        return any(isinstance(r.get("bandwidth"), dict) for r in rows)
    return any(r.get(key) is not None for r in rows)


def table_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The columns for ``rows``: the base ones plus the optional ones their data needs."""
    columns = list(TABLE_COLUMNS)
    for key, title, after in OPTIONAL_COLUMNS:
        if _needed(key, rows):
            at = next((i for i, (k, _) in enumerate(columns) if k == after), len(columns) - 1)
            columns.insert(at + 1, (key, title))
    return columns


def decode_path(row: dict[str, Any]) -> str:
    """How tokens were decoded: ``generate()``, a peer's own path (its row says), or the engine's KV cache
    (``+graphs`` with CUDA graphs, ``+compile`` with the torch.compile'd decode step, ``+gqa`` with the
    packed one-token attention, ``+fusedmoe`` with the fused MoE experts)."""
    if row.get("driver") == "generate":
        return "generate()"
    if isinstance(row.get("decode_path"), str):
        return str(row["decode_path"])
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
    """A short remark for the table: the error, that the cell hit its time limit, or the peer's note."""
    error = row.get("error") or row.get("first_error")
    text = None
    if error:
        text = str(error)
    elif row.get("complete") is False and row.get("driver") not in PEER_DRIVERS:
        text = "time limit: partial"
    elif row.get("peer_note"):
        text = str(row["peer_note"])
    if text is None:
        return None
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def _dict(row: dict[str, Any], key: str) -> dict[str, Any]:
    value = row.get(key)
    return value if isinstance(value, dict) else {}


def _workload_key(row: dict[str, Any]) -> tuple[Any, ...]:
    wl, versions = _dict(row, "workload"), _dict(row, "versions")
    return (
        row.get("model"),
        row.get("concurrency"),
        versions.get("device"),
        wl.get("prompt_tokens"),
        wl.get("output_tokens"),
    )


def peer_ratio(row: dict[str, Any], rows: Sequence[dict[str, Any]], peer_driver: str) -> float | None:
    """Our output tok/s over the peer's in the same cell (model, concurrency, device, prompt and output
    tokens; the last such peer row), for our standard-workload rows; None otherwise."""
    if row.get("driver") not in ("engine", "http") or row.get("scenario") not in (None, "standard"):
        return None
    ours = row.get("output_tokens_per_s")
    key = _workload_key(row)
    peers = [
        r
        for r in rows
        if r.get("driver") == peer_driver and r.get("output_tokens_per_s") and _workload_key(r) == key
    ]
    if not ours or not peers:
        return None
    return float(ours) / float(peers[-1]["output_tokens_per_s"])


def _cell(key: str, row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    value: Any = row.get(key)
    if key == "note":
        value = row_note(row)
    elif key == "decode_path":
        value = decode_path(row)
    elif key == "completed" and value is not None:
        value = f"{value}/{row.get('requests', '?')}"
    elif key in ("roofline_fraction", "roofline_copy_fraction") and isinstance(value, float):
        value = f"{value:.0%}"
    elif key in ("vs_peer", "vs_serve"):
        ratio = peer_ratio(row, rows, "peer" if key == "vs_peer" else "peer_http")
        value = None if ratio is None else f"{ratio:.1f}x"
    elif key == "bandwidth_tbs":
        bw = _dict(row, "bandwidth")
        sheet, copy = bw.get("datasheet_bytes_per_s"), bw.get("copy_bytes_per_s")
        value = (
            None if not (sheet or copy) else "/".join(f"{v / 1e12:.2f}" if v else "-" for v in (sheet, copy))
        )
    return _fmt(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table (one line per row, in the given order)."""
    columns = table_columns(rows)
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, rule]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row, rows) for key, _ in columns) + " |")
    return "\n".join(lines)


def sort_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order by model, workload, backend, concurrency, driver (generate, engine, http, then the peers)."""
    order = {"generate": 0, "engine": 1, "http": 2, "peer": 3, "peer_http": 4}
    return sorted(
        rows,
        key=lambda r: (
            r["model"],
            str(r.get("scenario") or "standard"),
            r["driver"] in PEER_DRIVERS,
            r["backend"],
            r["concurrency"],
            order.get(r["driver"], 9),
        ),
    )


def markers(section: str | None = None) -> tuple[str, str]:
    """The README's begin/end markers: ``<!-- results:begin -->`` (the H100 history), or
    ``<!-- results:<section>:begin -->`` for a section of its own (e.g. ``h200``)."""
    if not section:
        return README_BEGIN, README_END
    return f"<!-- results:{section}:begin -->", f"<!-- results:{section}:end -->"


def replace_between_markers(text: str, block: str, section: str | None = None) -> str:
    """Put ``block`` between the (section's) results markers of ``text`` (appending them when absent)."""
    begin, end_marker = markers(section)
    wrapped = f"{begin}\n{block.rstrip()}\n{end_marker}"
    if begin in text and end_marker in text:
        start = text.index(begin)
        end = text.index(end_marker) + len(end_marker)
        return text[:start] + wrapped + text[end:]
    return text.rstrip() + "\n\n" + wrapped + "\n"
