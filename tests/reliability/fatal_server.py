"""The real inference server with one injected fault: a sticky device error in a decode step.

``FATAL_AFTER_STEPS`` decode steps into its first life (a marker file ``FATAL_MARKER`` records that the
fault fired, so the container the kubelet restarts serves normally), the decode step raises what CUDA
raises after an illegal memory access. Everything after it (the engine's fatal classification, every
open request answered, ``/live`` 503) is the server's own code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omega_server.__main__ import main
from omega_server.engine.runner import Runner

CUDA_FAULT = "CUDA error: an illegal memory access was encountered (injected)"
_real_decode = Runner.decode


def _decode(self: Runner, *args: Any, **kwargs: Any) -> Any:
    marker = Path(os.environ["FATAL_MARKER"])
    count = getattr(self, "_injected_steps", 0) + 1
    self._injected_steps = count  # type: ignore[attr-defined]
    if not marker.exists() and count > int(os.environ.get("FATAL_AFTER_STEPS", "20")):
        marker.write_text("fired\n")
        raise RuntimeError(CUDA_FAULT)
    return _real_decode(self, *args, **kwargs)


if __name__ == "__main__":
    Runner.decode = _decode  # type: ignore[method-assign]
    sys.exit(main())
