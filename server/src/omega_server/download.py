"""`omega-vlm-server download`: fetch an hf:// MODEL_PATH into HF_HOME once (the pod's init container).

The operator runs this as the `model-download` init container of every pod whose model.uri is
hf://, with HF_HOME on the model cache volume (spec.model.cache, else an emptyDir). Pods share
the volume, so the download is serialised by an exclusive lock on `HF_HOME/omega-vlm/download.lock`
and recorded by a marker, `HF_HOME/omega-vlm/complete/<org>--<name>@<revision>` (the commit it
resolved to), written only after the whole snapshot is on disk: a pod that finds the marker (and
the snapshot) exits at once without a single request. The server container then reads the
snapshot with HF_HUB_OFFLINE=1. HF_ENDPOINT and HF_TOKEN work as huggingface_hub reads them.
Exit 0 when the snapshot is there; 1 with one `fatal: ...` line when it cannot be fetched.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = "omega-vlm"


class DownloadError(RuntimeError):
    """An hf:// MODEL_PATH that cannot be parsed or fetched (message names MODEL_PATH)."""


@dataclass(frozen=True)
class HubModel:
    """An hf://org/name[@revision] MODEL_PATH."""

    repo_id: str
    revision: str | None

    @property
    def ref(self) -> str:
        return self.revision or "main"


def parse_hf_uri(model_path: str) -> HubModel:
    """hf://org/name[@revision] -> HubModel; DownloadError naming MODEL_PATH when malformed."""
    repo_id, _, revision = model_path[len("hf://") :].partition("@")
    if not model_path.startswith("hf://") or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise DownloadError(f"MODEL_PATH {model_path!r}: expected hf://org/name[@revision]")
    return HubModel(repo_id, revision or None)


def marker_path(hf_home: Path, model: HubModel) -> Path:
    """Where the completed download of `model` is recorded."""
    return (
        hf_home
        / STATE_DIR
        / "complete"
        / f"{model.repo_id.replace('/', '--')}@{model.ref.replace('/', '--')}"
    )


def _complete(marker: Path) -> Path | None:
    """The recorded snapshot directory when the marker and its snapshot exist, else None."""
    try:
        snapshot = Path(marker.read_text().strip())
    except OSError:
        return None
    return snapshot if (snapshot / "config.json").is_file() else None


def ensure_snapshot(model: HubModel, hf_home: Path) -> tuple[Path, bool]:
    """(snapshot directory, downloaded now?) for `model` in the Hub cache under `hf_home`.

    Holds the lock for the whole download, so concurrent pods on the same volume fetch once.
    """
    state = hf_home / STATE_DIR
    (state / "complete").mkdir(parents=True, exist_ok=True)
    marker = marker_path(hf_home, model)
    with open(state / "download.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _complete(marker)
        if found is not None:
            return found, False
        from huggingface_hub import snapshot_download

        try:
            local = Path(
                snapshot_download(repo_id=model.repo_id, revision=model.revision, cache_dir=hf_home / "hub")
            )
        except Exception as exc:
            raise DownloadError(
                f"MODEL_PATH hf://{model.repo_id}{'@' + model.revision if model.revision else ''}: "
                f"cannot download {model.repo_id}: {type(exc).__name__}: {exc}"
            ) from exc
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(f"{local}\n")
        tmp.replace(marker)
        return local, True


def main(argv: list[str] | None = None) -> int:
    """Download MODEL_PATH (hf:// only; anything else has nothing to fetch) into HF_HOME."""
    del argv
    model_path = os.environ.get("MODEL_PATH", "")
    if not model_path.startswith("hf://"):
        print(f"download: MODEL_PATH {model_path!r} is not hf://, nothing to fetch", flush=True)
        return 0
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    started = time.monotonic()
    try:
        snapshot, fetched = ensure_snapshot(parse_hf_uri(model_path), hf_home)
    except (DownloadError, OSError) as exc:
        print(f"fatal: {exc}", file=sys.stderr, flush=True)
        return 1
    took = time.monotonic() - started
    what = f"downloaded in {took:.1f} s" if fetched else "already complete (no download)"
    print(f"download: {model_path} -> {snapshot}: {what}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
