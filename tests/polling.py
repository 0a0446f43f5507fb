"""Polling for the tests that drive real processes: one ``wait_for``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: What a poll may raise while the thing it waits for is not there yet (kubectl failing, a key missing).
TRANSIENT: tuple[type[Exception], ...] = (subprocess.CalledProcessError, KeyError, ValueError)


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.25,
    transient: tuple[type[Exception], ...] = TRANSIENT,
) -> T:
    """Poll until ``predicate()`` is truthy and return it; TimeoutError naming ``what`` otherwise.

    Exceptions in ``transient`` count as "not yet" (the last one is named in the TimeoutError)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except transient as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what}: not after {timeout:.0f}s" + (f" (last error: {last})" if last else ""))
