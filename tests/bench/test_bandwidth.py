"""The GPU's bandwidth for the roofline: the datasheet table by device name, and the measured copy."""

from __future__ import annotations

import pytest

from bench.vlmbench import bandwidth
from bench.vlmbench.results import make_row
from bench.vlmbench.stats import RequestTiming, summarize


@pytest.mark.parametrize(
    ("name", "tbs"),
    [
        ("NVIDIA H100 80GB HBM3", 3.35),  # the SXM part, as torch names it
        ("NVIDIA H100 PCIe", 2.0),
        ("NVIDIA H100 NVL", 3.9),
        ("NVIDIA H200", 4.8),
        ("NVIDIA H200 NVL", 4.8),
        ("NVIDIA GH200 480GB", 4.0),
    ],
)
def test_datasheet_bandwidth_by_device_name(name: str, tbs: float) -> None:
    value = bandwidth.datasheet_bandwidth(name)
    assert value is not None and value[0] == pytest.approx(tbs * 1e12) and "datasheet" in value[1]


def test_unknown_devices_have_no_datasheet_figure() -> None:
    assert bandwidth.datasheet_bandwidth("cpu") is None
    assert bandwidth.datasheet_bandwidth("NVIDIA A100-SXM4-80GB") is None


def test_copy_bandwidth_is_bytes_read_and_written_over_time() -> None:
    m = bandwidth.copy_bandwidth("cpu", buffer_bytes=8 << 20, reps=3)
    assert m.buffer_bytes == 8 << 20 and m.reps == 3
    assert 0 < m.bytes_per_s_min <= m.bytes_per_s <= m.bytes_per_s_max
    with pytest.raises(ValueError):
        bandwidth.copy_bandwidth("cpu", buffer_bytes=8, reps=1)


def test_the_roofline_bandwidth_prefers_the_datasheet_then_the_copy() -> None:
    copy = bandwidth.CopyMeasurement("cuda", 1 << 30, 5, 4.3e12, 4.2e12, 4.35e12)
    h200 = bandwidth.bandwidth_info("NVIDIA H200", copy)
    assert h200["datasheet_bytes_per_s"] == 4.8e12 and h200["copy_bytes_per_s"] == 4.3e12
    assert bandwidth.roofline_bandwidth(h200) == 4.8e12
    assert bandwidth.roofline_bandwidth(h200, override=3.0e12) == 3.0e12
    a100 = bandwidth.bandwidth_info("NVIDIA A100", copy)
    assert a100["datasheet_bytes_per_s"] is None and bandwidth.roofline_bandwidth(a100) == 4.3e12
    cpu = bandwidth.measure("cpu", "cpu", 1 << 20, 2)
    assert cpu["copy_bytes_per_s"] > 0 and "copy_error" not in cpu
    failed = bandwidth.measure("NVIDIA H200", "no-such-device", 1 << 20, 2)
    assert failed["copy_bytes_per_s"] is None and failed["copy_error"] and failed["datasheet_bytes_per_s"]


def test_rows_record_the_fraction_of_both_rooflines() -> None:
    timings = [
        RequestTiming(submitted=0.0, events=[(0.1 + i * 0.01, 1) for i in range(11)]) for _ in range(4)
    ]
    row = make_row(
        model="m",
        backend="sdpa",
        driver="http",
        concurrency=4,
        metrics=summarize(timings, 11),
        peak_gpu_mem_gb=None,
        baseline_output_tokens_per_s=None,
        roofline_output_tokens_per_s=1000.0,  # datasheet
        roofline_copy_output_tokens_per_s=800.04,  # measured copy
        versions={},
        command="x",
    )
    # 4 sequences at 100 tok/s each
    assert row["roofline_fraction"] == pytest.approx(0.4) and row["roofline_copy_fraction"] == pytest.approx(
        0.5
    )
    assert row["roofline_copy_output_tokens_per_s"] == 800.0
