"""Attention backend choice: flash-attn 2 first when asked, PyTorch SDPA as the in-process fallback.

``auto`` and ``flash_attention_2`` load the model with ``attn_implementation="flash_attention_2"`` and run
the warm-up forward (with an image) on it. Any failure there (ImportError, ValueError, a CUDA or kernel
error) is recorded and the same process continues with ``sdpa``: the model's attention is switched in
place when it loaded, or the model is loaded again with sdpa when it did not. ``sdpa`` and ``eager``
are taken as asked. The backend reported is always the loaded model's ``config._attn_implementation``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omega_server import flash_failure, models
from omega_server.engine.errors import describe_error

log = logging.getLogger(__name__)

FLASH = "flash_attention_2"
FALLBACK = "sdpa"
#: ATTN_IMPL values the server accepts.
CHOICES: tuple[str, ...] = ("auto", FLASH, "sdpa", "eager")
#: ATTN_IMPL values that try flash-attn 2 first (the operator's ``health_report.FLASH_REQUESTS``
#: must be the same set: tests/contracts checks it).
FLASH_REQUESTS: frozenset[str] = frozenset({"auto", FLASH})


@dataclass
class FlashAttnStatus:
    """What /health reports under ``flash_attn``."""

    available: bool  # transformers.utils.is_flash_attn_2_available()
    loaded: bool  # the model runs with flash_attention_2 after the warm-up forward
    version: str | None  # installed flash_attn distribution version, if any
    error: str | None  # why flash is not in use ("ImportError: ..."), None when loaded or not asked
    error_kind: str | None = None  # flash_failure.classify of the error (None when there is none)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the /health ``flash_attn`` object)."""
        return asdict(self)


@dataclass
class AttentionChoice:
    """The loaded model plus the attention decision."""

    loaded: models.LoadedModel
    requested: str
    backend: str  # model.config._attn_implementation
    flash_attn: FlashAttnStatus
    flash_load_failures: int  # 1 when a flash attempt failed and we fell back, else 0


def flash_attn_version() -> str | None:
    """Version of the installed ``flash_attn`` (or ``flash-attn``) distribution; None when absent."""
    for dist in ("flash_attn", "flash-attn"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def flash_attn_available() -> bool:
    """transformers' own check (package present, CUDA torch, a GPU), never a bare ``import flash_attn``."""
    from transformers.utils import is_flash_attn_2_available

    try:
        return bool(is_flash_attn_2_available())
    except Exception:  # a broken install can make the probe itself fail
        return False


def flash_attn_import_error() -> str | None:
    """Import flash_attn's CUDA extension the way the model will; None when it imports.

    An installed but broken package (its ``flash_attn_2_cuda`` extension missing or built for another
    torch) passes ``is_flash_attn_2_available`` on a GPU machine and only fails here or at the first
    forward pass.
    """
    try:
        importlib.import_module("flash_attn")
    except Exception as exc:  # ImportError, OSError (bad .so), RuntimeError from the extension
        return describe_error(exc)
    return None


def resolve(
    path: Path,
    *,
    requested: str,
    dtype: str,
    device: str,
    warmup: Callable[[models.LoadedModel], None],
    loader: Callable[..., models.LoadedModel] = models.load,
) -> AttentionChoice:
    """Load the model with the requested backend, warm it up, fall back to sdpa when flash fails.

    ``warmup`` runs one forward pass with an image on the loaded model and raises on failure.
    Errors with sdpa/eager (or with the sdpa fallback) propagate: the server cannot start.
    """
    if requested not in CHOICES:
        raise ValueError(f"ATTN_IMPL must be one of {', '.join(CHOICES)}, got {requested!r}")
    available = flash_attn_available()
    version = flash_attn_version()
    if requested not in FLASH_REQUESTS:
        loaded = loader(path, attn_implementation=requested, dtype=dtype, device=device)
        warmup(loaded)
        return AttentionChoice(
            loaded=loaded,
            requested=requested,
            backend=_backend(loaded),
            flash_attn=FlashAttnStatus(available=available, loaded=False, version=version, error=None),
            flash_load_failures=0,
        )

    loaded_flash: models.LoadedModel | None = None
    error: str | None = None
    failure: BaseException | None = None
    try:
        loaded_flash = loader(path, attn_implementation=FLASH, dtype=dtype, device=device)
        warmup(loaded_flash)
    except (ImportError, ValueError, RuntimeError, OSError, AttributeError, TypeError) as exc:
        # RuntimeError covers torch CUDA / kernel errors (torch.AcceleratorError subclasses it).
        error, failure = describe_error(exc), exc
        if loaded_flash is not None and available:
            import_error = flash_attn_import_error()
            if import_error is not None and import_error not in error:
                error = f"{error} ({import_error})"
        log.warning("flash_attention_2 failed, falling back to %s: %s", FALLBACK, error)
    if error is None and loaded_flash is not None and _backend(loaded_flash) != FLASH:
        error = f"RuntimeError: the model loaded with {_backend(loaded_flash)}, not {FLASH}"
    if error is None and loaded_flash is not None:
        return AttentionChoice(
            loaded=loaded_flash,
            requested=requested,
            backend=_backend(loaded_flash),
            flash_attn=FlashAttnStatus(available=available, loaded=True, version=version, error=None),
            flash_load_failures=0,
        )

    # Hand the flash model over without keeping a reference here: if it must be reloaded, its
    # weights are freed first (two copies of a large model do not fit one GPU).
    candidates = [loaded_flash] if loaded_flash is not None else []
    del loaded_flash
    kind = flash_failure.classify(failure, error or "", installed=version is not None)
    del failure
    try:
        loaded = _switch_to_fallback(candidates, path, dtype=dtype, device=device, loader=loader)
        warmup(loaded)
    except BaseException as exc:  # the server cannot start: its fatal line also says how flash failed
        flash_failure.add_note(exc, kind, error or "")
        raise
    return AttentionChoice(
        loaded=loaded,
        requested=requested,
        backend=_backend(loaded),
        flash_attn=FlashAttnStatus(
            available=available, loaded=False, version=version, error=error, error_kind=kind
        ),
        flash_load_failures=1,
    )


def _switch_to_fallback(
    candidates: list[models.LoadedModel],
    path: Path,
    *,
    dtype: str,
    device: str,
    loader: Callable[..., models.LoadedModel],
) -> models.LoadedModel:
    """Switch a loaded model's attention to sdpa in place (no second weight load), else load again.

    ``candidates`` holds the model loaded with flash, if any; it is taken out of the list so that
    this function holds the last reference and can free it before reloading.
    """
    if candidates:
        loaded = candidates.pop()
        try:
            loaded.model.set_attn_implementation(FALLBACK)
            if _backend(loaded) == FALLBACK:
                return loaded
        except Exception as exc:  # older/odd models: reload instead
            log.warning(
                "switching attention in place failed (%s); reloading with %s", describe_error(exc), FALLBACK
            )
        del loaded
        _free_cuda()
    return loader(path, attn_implementation=FALLBACK, dtype=dtype, device=device)


def _backend(loaded: models.LoadedModel) -> str:
    return str(loaded.model.config._attn_implementation)


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
