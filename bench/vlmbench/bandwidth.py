"""GPU memory bandwidth for the roofline: the datasheet figure of the GPU that ran, by its name, and a
device-to-device copy measured on it at the start of each run.

The roofline (``roofline.py``) divides the bytes of one decode step by a bandwidth. The datasheet figure
is what the vendor promises; a large ``copy_`` is about what a kernel can really stream (bytes read +
bytes written over the time). Rows record both, and the fraction of each roofline.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

#: (substring of ``torch.cuda.get_device_name()``, bytes/s, source). The first match wins, so the more
#: specific names come first ("GH200" before "H200", "H100 NVL"/"H100 PCIe" before "H100").
#: Sources, peak memory bandwidth as printed in NVIDIA's product datasheets:
#: - "NVIDIA H100 Tensor Core GPU" datasheet: H100 SXM 3.35 TB/s, H100 NVL 3.9 TB/s, H100 PCIe 2 TB/s
#: - "NVIDIA H200 Tensor Core GPU" datasheet: H200 SXM and H200 NVL 4.8 TB/s
#: - "NVIDIA GH200 Grace Hopper Superchip" datasheet: 4 TB/s with 96 GB HBM3 (the 144 GB HBM3e part
#:   is listed at 4.9 TB/s; torch names both "NVIDIA GH200 ...", so this table takes the lower figure)
DATASHEET_BANDWIDTH: tuple[tuple[str, float, str], ...] = (
    ("GH200", 4.0e12, "NVIDIA GH200 Grace Hopper Superchip datasheet (96 GB HBM3)"),
    ("H200", 4.8e12, "NVIDIA H200 Tensor Core GPU datasheet (SXM and NVL)"),
    ("H100 NVL", 3.9e12, "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL)"),
    ("H100 PCIe", 2.0e12, "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe)"),
    ("H100", 3.35e12, "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM)"),
)


def datasheet_bandwidth(device_name: str) -> tuple[float, str] | None:
    """``(bytes/s, source)`` of the GPU called ``device_name``; None for a GPU (or CPU) not in the table."""
    name = device_name.lower()
    for pattern, value, source in DATASHEET_BANDWIDTH:
        if pattern.lower() in name:
            return value, source
    return None


@dataclass(frozen=True)
class CopyMeasurement:
    """A device-to-device copy: ``bytes_per_s`` = 2 x buffer bytes (read + written) / time, median of reps."""

    device: str
    buffer_bytes: int
    reps: int
    bytes_per_s: float
    bytes_per_s_min: float
    bytes_per_s_max: float


def copy_bandwidth(device: str = "cuda", buffer_bytes: int = 2 << 30, reps: int = 10) -> CopyMeasurement:
    """Copy a ``buffer_bytes`` tensor into another ``reps`` times (after 2 untimed copies) and return the
    median rate. On a GPU each copy is timed with CUDA events; on the CPU with ``perf_counter``."""
    import torch

    if reps < 1 or buffer_bytes < 1024:
        raise ValueError("copy_bandwidth needs reps >= 1 and at least 1 KiB")
    src = torch.empty(buffer_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    nbytes = 2 * src.numel() * src.element_size()
    cuda = src.device.type == "cuda"
    for _ in range(2):
        dst.copy_(src)
    seconds: list[float] = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            dst.copy_(src)
            seconds.append(time.perf_counter() - began)
    rates = [nbytes / s for s in seconds if s > 0]
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return CopyMeasurement(
        device=device,
        buffer_bytes=nbytes // 2,
        reps=reps,
        bytes_per_s=statistics.median(rates),
        bytes_per_s_min=min(rates),
        bytes_per_s_max=max(rates),
    )


def bandwidth_info(device_name: str, copy: CopyMeasurement | None) -> dict[str, Any]:
    """What a row records: the device, its datasheet bandwidth (or None) and the measured copy."""
    sheet = datasheet_bandwidth(device_name)
    return {
        "device": device_name,
        "datasheet_bytes_per_s": None if sheet is None else sheet[0],
        "datasheet_source": None if sheet is None else sheet[1],
        "copy_bytes_per_s": None if copy is None else round(copy.bytes_per_s),
        "copy": None if copy is None else asdict(copy),
    }


def roofline_bandwidth(info: dict[str, Any], override: float | None = None) -> float | None:
    """The bandwidth the row's main roofline uses: an explicit override, else the datasheet figure, else
    (a GPU not in the table, or the CPU) the measured copy."""
    if override:
        return override
    value = info.get("datasheet_bytes_per_s") or info.get("copy_bytes_per_s")
    return float(value) if value else None


def measure(device_name: str, device: str, buffer_bytes: int, reps: int) -> dict[str, Any]:
    """``bandwidth_info`` with a copy measured on ``device`` (the copy's error is recorded, not raised)."""
    try:
        copy: CopyMeasurement | None = copy_bandwidth(device, buffer_bytes, reps)
        error = None
    except Exception as exc:  # e.g. out of memory: the datasheet figure still stands
        copy, error = None, f"{type(exc).__name__}: {exc}"[:300]
    info = bandwidth_info(device_name, copy)
    if error:
        info["copy_error"] = error
    return info
