"""Classify why the flash-attn 2 attempt failed, for /health and the termination message. No torch import.

The operator rolls an OmegaVLM back to sdpa only for the *flash* kinds (the flash-attn build or the
device cannot run it); an out-of-memory during the flash load or warm-up, or a failure with another
cause (a bad model file, a bug), is reported with its own kind and never moves the fleet.

Kinds (``/health`` ``flash_attn.error_kind``):

* ``not_installed``: flash-attn is not installed (transformers' "the package for FlashAttention2
  doesn't seem to be installed").
* ``import_error``: it is installed but does not import (ABI mismatch, ``undefined symbol``, the
  ``flash_attn_2_cuda`` extension missing or built for another torch).
* ``unsupported_device``: the device or the model cannot run it (no CUDA GPU, older than Ampere,
  "no kernel image is available", a model without flash-attn 2 support, transformers not applying it).
* ``kernel_error``: a CUDA / kernel error while the flash model ran its warm-up forward.
* ``out_of_memory``: the device ran out of memory during the flash load or warm-up (not a flash fault).
* ``other``: anything else (for example a model file that cannot be read): not a flash fault either.
"""

from __future__ import annotations

import re
import sys
from typing import Literal

ErrorKind = Literal[
    "not_installed", "import_error", "unsupported_device", "kernel_error", "out_of_memory", "other"
]
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "not_installed",
    "import_error",
    "unsupported_device",
    "kernel_error",
    "out_of_memory",
    "other",
)
#: The kinds that are a fault of flash-attn on this build/device: the only ones the operator acts on.
FLASH_KINDS: frozenset[str] = frozenset(
    {"not_installed", "import_error", "unsupported_device", "kernel_error"}
)
#: How the termination message names the kind (the operator's ``fallback.findings`` reads it).
TERMINATION_KEY = "flash_attn.error_kind"

_OOM_RE = re.compile(
    r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|CUBLAS_STATUS_ALLOC_FAILED", re.I
)
_NOT_INSTALLED_RE = re.compile(
    r"seems to be not installed|n't seem to be installed|No module named ['\"]?flash_attn['\"]?$", re.I
)
_DEVICE_RE = re.compile(
    r"no kernel image is available|only supports? (Ampere|sm)|Ampere GPUs or newer|compute capability"
    r"|not available on CPU|no CUDA GPUs|CUDA is not available|requires a (CUDA|GPU)|does not support Flash"
    r"|not supported on this (device|GPU)|loaded with \w+, not flash_attention_2",
    re.I,
)
_IMPORT_RE = re.compile(
    r"undefined symbol|flash_attn_2_cuda|cannot open shared object|\.so\b|DLL load failed", re.I
)
_KERNEL_RE = re.compile(r"CUDA error|CUBLAS|cuDNN|device-side assert|illegal memory access|kernel", re.I)


def classify(exc: BaseException | None, error: str, *, installed: bool) -> ErrorKind:
    """The kind of one flash failure: ``exc`` as raised (None when only the text is known), ``error``
    its one-line form, ``installed`` whether a flash_attn distribution is present."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None)
    if (oom is not None and exc is not None and isinstance(exc, oom)) or _OOM_RE.search(error):
        return "out_of_memory"
    if _DEVICE_RE.search(error):
        return "unsupported_device"
    if isinstance(exc, ImportError) or error.startswith(("ImportError", "ModuleNotFoundError")):
        if not installed or _NOT_INSTALLED_RE.search(error):
            return "not_installed"
        return "import_error"
    if _IMPORT_RE.search(error) and "flash" in error.lower():
        return "import_error"
    accel = getattr(torch, "AcceleratorError", None)
    if (accel is not None and exc is not None and isinstance(exc, accel)) or _KERNEL_RE.search(error):
        return "kernel_error"
    return "other"


def termination_note(kind: str, error: str) -> str:
    """What the fatal line adds when a flash failure came before it: ``(flash_attn.error_kind=KIND: ERROR)``."""
    return f"({TERMINATION_KEY}={kind}: {error})"


def add_note(exc: BaseException, kind: str, error: str) -> None:
    """Record on ``exc`` (a later fatal error) the flash failure that came before it (PEP 678 note)."""
    exc.add_note(termination_note(kind, error))


def note_of(exc: BaseException) -> str | None:
    """The flash-failure note :func:`add_note` put on ``exc``, if any (for the fatal line)."""
    prefix = f"({TERMINATION_KEY}="
    return next((n for n in getattr(exc, "__notes__", ()) if str(n).startswith(prefix)), None)
