"""The process kubelet's image map: which local command an image runs as (pure functions)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster.settings import repo_root

SERVER_IMAGE_SUFFIX = "omega-vlm-server"


@dataclass(frozen=True)
class ImageEntry:
    """An image (or repository suffix) and the command that stands in for its entrypoint."""

    match: str  # "repo/suffix" (any registry, any tag) or a full "repo:tag" / "repo@digest"
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"match": self.match, "command": list(self.command), "env": dict(self.env)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageEntry:
        return cls(d["match"], tuple(d["command"]), dict(d.get("env") or {}))


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``registry/repo:tag@digest`` -> (repository incl. registry, tag, digest)."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    return rest, tag, digest or None


def _is_full_image(match: str) -> bool:
    _, tag, digest = split_image(match)
    return tag is not None or digest is not None


def matches(entry_match: str, image: str) -> bool:
    """True when ``image`` is ``entry_match`` (full image) or its repository ends in ``entry_match``."""
    if _is_full_image(entry_match):
        return image == entry_match
    repo, _, _ = split_image(image)
    return repo == entry_match or repo.endswith("/" + entry_match)


def resolve(entries: list[ImageEntry], image: str) -> ImageEntry | None:
    """The entry for ``image``: an exact image first, then the longest repository suffix; last added wins ties."""
    best: tuple[int, int, ImageEntry] | None = None
    for e in entries:
        if not matches(e.match, image):
            continue
        key = (1 if _is_full_image(e.match) else 0, len(e.match))
        if best is None or (key[0], key[1]) >= (best[0], best[1]):
            best = (key[0], key[1], e)
    return best[2] if best else None


def venv_python() -> str:
    """The repository's ``.venv`` python, or this interpreter when there is none."""
    candidate = repo_root() / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def default_entries() -> list[ImageEntry]:
    """The built-in map: the omega-vlm server image runs ``python -m omega_server`` from ``.venv``."""
    return [ImageEntry(SERVER_IMAGE_SUFFIX, (venv_python(), "-m", "omega_server"))]


def load(path: Path) -> list[ImageEntry]:
    """Read the map file (JSON list); the built-in entries when it does not exist."""
    if not path.exists():
        return default_entries()
    return [ImageEntry.from_dict(d) for d in json.loads(path.read_text())]


def save(path: Path, entries: list[ImageEntry]) -> None:
    """Write the map file atomically (the kubelet re-reads it when it changes)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([e.to_dict() for e in entries], indent=1))
    tmp.replace(path)


def add(path: Path, entry: ImageEntry) -> None:
    """Add (or replace, same ``match``) one entry in the map file."""
    entries = [e for e in load(path) if e.match != entry.match]
    save(path, [*entries, entry])
