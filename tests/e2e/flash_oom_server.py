"""The real inference server, with one injected failure: its flash warm-up runs out of GPU memory.

The e2e OOM test's flash image runs this file. The real loader loads the model (eager stands in for
a flash-attn build, which cannot load on this CPU machine) and the real warm-up step raises
``torch.OutOfMemoryError`` on that model, as a CUDA OOM during the flash warm-up would; everything
after it (the in-process switch to sdpa, /health, the fatal line) is the server's own code.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import torch
from omega_server import attention, models
from omega_server.__main__ import main
from omega_server.engine import load

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB (injected at the flash warm-up)"
_real_resolve, _real_warm_up = attention.resolve, load.warm_up


def _loader(path: Path, *, attn_implementation: str, **kwargs: Any) -> models.LoadedModel:
    impl = "eager" if attn_implementation == attention.FLASH else attn_implementation
    return models.load(path, attn_implementation=impl, **kwargs)


def _warm_up(loaded: models.LoadedModel) -> None:
    if loaded.model.config._attn_implementation == "eager":  # the flash stand-in
        raise torch.OutOfMemoryError(OOM_MESSAGE)
    _real_warm_up(loaded)


if __name__ == "__main__":
    attention.resolve = functools.partial(_real_resolve, loader=_loader)  # type: ignore[assignment]
    load.warm_up = _warm_up  # type: ignore[assignment]
    sys.exit(main())
