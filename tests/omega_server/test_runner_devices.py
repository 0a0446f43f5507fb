"""The dynamic runner's cache operations stay device-correct when the model spans several devices.

With ``device_map="sequential"`` over two GPUs the cache's layers live on two devices. CUDA refuses an
``index_select`` whose index is on another device than its input; on the CPU a second device is stood in
for by ``meta`` and CUDA's check by a dispatch mode that raises the same way (issue 19: the engine died
the first time one of two concurrent requests finished early).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omega_server.engine.runner import Runner
from torch.utils._python_dispatch import TorchDispatchMode


class CudaDeviceCheck(TorchDispatchMode):
    """Raise as CUDA does when ``index_select``'s index is not on its input's device."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.index_select.default:
            source, _, index = args
            if source.device != index.device:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found {source.device} and {index.device}"
                )
        return func(*args, **(kwargs or {}))


class TwoDeviceCache:
    """A cache of four layers, the first two on the CPU, the last two on a second device."""

    def __init__(self, rows: int, width: int) -> None:
        self.width = width
        self.layers = [
            SimpleNamespace(
                keys=torch.arange(rows, dtype=torch.float32)
                .reshape(rows, 1, 1, 1)
                .expand(rows, 2, width, 4)
                .contiguous()
                .to(dev),
                values=torch.zeros(rows, 2, width, 4, device=dev),
            )
            for dev in ("cpu", "cpu", "meta", "meta")
        ]

    def get_seq_length(self) -> int:
        return self.width


def runner_with(cache: TwoDeviceCache, lengths: list[int]) -> Runner:
    runner = Runner.__new__(Runner)  # the cache operations need no model
    runner.cache = cache
    runner.seqs = [SimpleNamespace(cache_len=n) for n in lengths]  # type: ignore[misc]
    return runner


def test_the_check_stands_in_for_cuda() -> None:
    with CudaDeviceCheck(), pytest.raises(RuntimeError, match="same device"):
        torch.zeros(2, 3, device="meta").index_select(0, torch.tensor([0]))


def test_evict_across_two_devices_keeps_the_rows_asked_for() -> None:
    cache = TwoDeviceCache(rows=3, width=10)
    runner = runner_with(cache, [10, 6, 8])
    with CudaDeviceCheck():
        runner.evict([0, 2])
    assert [s.cache_len for s in runner.seqs] == [10, 8]
    for layer, dev in zip(cache.layers, ("cpu", "cpu", "meta", "meta"), strict=True):
        assert layer.keys.device.type == dev
        assert tuple(layer.keys.shape) == (2, 2, 10, 4)
    assert cache.layers[0].keys[:, 0, 0, 0].tolist() == [0.0, 2.0]


def test_evict_trims_padding_no_kept_row_needs() -> None:
    cache = TwoDeviceCache(rows=3, width=10)
    runner = runner_with(cache, [10, 6, 8])
    with CudaDeviceCheck():
        runner.evict([1, 2])
    assert all(layer.keys.shape[2] == 8 for layer in cache.layers)
