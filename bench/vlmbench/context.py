"""What one bench run shares across its phases: the configuration, the clock, the rows and their file,
the GPU's bandwidth, fresh image seeds, and the GPU memory helpers."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.vlmbench import roofline, shapes
from bench.vlmbench.results import write_rows
from bench.vlmbench.scenarios import SCENARIOS, Scenario
from bench.vlmbench.workload import Workload

PEERS: tuple[str, ...] = ("generate_batch", "serve")


@dataclass
class RunConfig:
    """What to run. Times are seconds."""

    models: list[str]
    out_dir: Path
    workdir: Path
    backends: list[str] = field(default_factory=lambda: ["sdpa", "flash_attention_2"])
    drivers: list[str] = field(default_factory=lambda: ["engine", "http"])
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    workload: Workload = field(default_factory=Workload)
    baseline: bool = True
    baseline_batch: int = 4
    baseline_tokens: int | None = None  # default: workload.output_tokens
    cell_time_limit_s: float = 120.0
    deadline_s: float | None = None  # no new cell starts later than this after the run began
    device: str = "auto"
    dtype: str = "bfloat16"
    bandwidth: float | None = None  # override of the roofline's bandwidth (default: datasheet, else copy)
    copy_bytes: int = 2 << 30  # the device-to-device copy measured at the start (per buffer)
    copy_reps: int = 10
    seed: int = 0
    command: str = ""
    max_batch_size: int | None = None  # default: the largest concurrency
    max_model_length: int | None = None  # default: what the cells need
    results_file: Path | None = None  # default: <out_dir>/<device>-<date>[-tag].json
    tag: str = ""
    cells: list[tuple[str, int]] | None = None  # explicit (driver, concurrency) list instead of the plan
    standard: bool = True  # the standard cells (cells / drivers x concurrency); False: skip them
    workloads: list[tuple[str, int]] = field(default_factory=list)  # (scenario, concurrency), over HTTP
    scenarios: dict[str, Scenario] = field(default_factory=dict)  # replacements of SCENARIOS by name
    peer: list[str] = field(default_factory=list)  # generate_batch and/or serve, once per model
    peer_concurrency: list[int] | None = None  # default: the standard cells' concurrencies
    peer_serve_concurrency: list[int] = field(default_factory=lambda: [1, 4])
    peer_tokens: int = 64  # output tokens per request in a generate_batch cell (cap)
    peer_serve_tokens: int = 32  # ... in a transformers-serve cell (it generates one request at a time)
    peer_cb_config: dict[str, Any] | None = None  # ContinuousBatchingConfig fields; None = its defaults
    profile_batches: list[int] = field(default_factory=list)  # decode-step profiles after the cells
    compile: bool = False  # EngineConfig.compile: torch.compile the static decode step
    fast_decode: bool = True  # EngineConfig.fast_decode: packed GQA decode attention, fused MoE experts
    log: Callable[[str], None] = print

    def scenario(self, name: str) -> Scenario:
        """The scenario called ``name`` (a replacement given in ``scenarios`` first)."""
        if name in self.scenarios:
            return self.scenarios[name]
        if name not in SCENARIOS:
            raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(SCENARIOS)}")
        return SCENARIOS[name]

    def standard_concurrency(self) -> list[int]:
        """Concurrencies of the standard cells (explicit cells first)."""
        if self.cells is not None:
            return sorted({c for d, c in self.cells if d in ("engine", "http")})
        return sorted(set(self.concurrency))


class Clock:
    """Seconds left before the run's deadline."""

    def __init__(self, deadline_s: float | None) -> None:
        self.started = time.monotonic()
        self.deadline_s = deadline_s

    def remaining(self) -> float:
        """Seconds left (infinite without a deadline)."""
        if self.deadline_s is None:
            return float("inf")
        return self.deadline_s - (time.monotonic() - self.started)


@dataclass
class RunContext:
    """The state of one run (one process)."""

    cfg: RunConfig
    versions: dict[str, Any]
    bandwidth: dict[str, Any]  # bandwidth.bandwidth_info(...) of this process's device
    path: Path
    clock: Clock
    rows: list[dict[str, Any]] = field(default_factory=list)
    next_seed: int = 1000

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        """Append a row and rewrite the results file (a run cut short keeps its figures)."""
        self.rows.append(row)
        write_rows(self.path, self.rows)
        return row

    def seeds(self, count: int) -> int:
        """The first of ``count`` image seeds no other cell of this run uses."""
        first = self.next_seed
        self.next_seed += max(1, count)
        return first

    def rooflines(
        self, weights: roofline.ParamBytes, shape: shapes.ModelShape, batch: int, context_tokens: float
    ) -> dict[str, float | None]:
        """Decode roofline tok/s at ``batch``: against the roofline bandwidth (datasheet unless overridden)
        and against the copy measured at the start of the run."""
        from bench.vlmbench.bandwidth import roofline_bandwidth

        def at(bw: float | None) -> float | None:
            if not bw:
                return None
            return roofline.roofline_tokens_per_s(
                weights,
                batch=batch,
                context_tokens=context_tokens,
                kv_per_token=roofline.kv_bytes_per_token(shape.num_layers, shape.kv_heads, shape.head_dim),
                hidden_size=shape.hidden_size,
                num_experts=int(shape.text.get("num_experts", 0)),
                top_k=int(shape.text.get("num_experts_per_tok", 0)),
                bandwidth=bw,
            )

        return {
            "roofline_output_tokens_per_s": at(roofline_bandwidth(self.bandwidth, self.cfg.bandwidth)),
            "roofline_copy_output_tokens_per_s": at(self.bandwidth.get("copy_bytes_per_s")),
        }


def cuda() -> Any:
    """``torch.cuda`` when a GPU is there, else None."""
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def reset_peak() -> None:
    """Reset the GPU's peak-memory counter."""
    c = cuda()
    if c is not None:
        c.synchronize()
        c.reset_peak_memory_stats()


def peak_gb() -> float | None:
    """Peak GPU memory allocated since the last reset, GB (None on the CPU)."""
    c = cuda()
    if c is None:
        return None
    c.synchronize()
    return float(c.max_memory_allocated()) / 1e9


def free() -> None:
    """Collect garbage and return cached GPU memory."""
    gc.collect()
    c = cuda()
    if c is not None:
        c.empty_cache()
