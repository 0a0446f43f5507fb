"""The process kubelet's image table: the local command an image runs, its env, user and own dirs (pure)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devcluster.settings import repo_root

SERVER_IMAGE_SUFFIX = "omega-vlm-server"


@dataclass(frozen=True)
class ImageDir:
    """A directory the image itself holds (part of each container's writable layer): owner and mode."""

    path: str
    uid: int
    gid: int
    mode: int = 0o755

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "uid": self.uid, "gid": self.gid, "mode": self.mode}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageDir:
        return cls(d["path"], int(d["uid"]), int(d["gid"]), int(d.get("mode", 0o755)))


@dataclass(frozen=True)
class PasswdEntry:
    """A user of the image's /etc/passwd (and its primary group, in /etc/group)."""

    name: str
    uid: int
    gid: int
    home: str

    def line(self) -> str:
        return f"{self.name}:x:{self.uid}:{self.gid}::{self.home}:/usr/sbin/nologin"


ROOT_USER = PasswdEntry("root", 0, 0, "/root")


@dataclass(frozen=True)
class ImageEntry:
    """An image (or repository suffix): the command that stands in for its entrypoint, the image's
    ENV, its USER (``uid``/``gid``), WORKDIR, the users its /etc/passwd adds to the host's, and the
    directories it owns. The host's files stand in for the rest of the image."""

    match: str  # "repo/suffix" (any registry, any tag) or a full "repo:tag" / "repo@digest"
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    uid: int = 0
    gid: int = 0
    workdir: str = "/"
    users: tuple[PasswdEntry, ...] = (ROOT_USER,)
    dirs: tuple[ImageDir, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "command": list(self.command),
            "env": dict(self.env),
            "uid": self.uid,
            "gid": self.gid,
            "workdir": self.workdir,
            "users": [u.__dict__ for u in self.users],
            "dirs": [d.to_dict() for d in self.dirs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageEntry:
        return cls(
            d["match"],
            tuple(d["command"]),
            dict(d.get("env") or {}),
            uid=int(d.get("uid", 0)),
            gid=int(d.get("gid", 0)),
            workdir=str(d.get("workdir") or "/"),
            users=tuple(PasswdEntry(**u) for u in d.get("users") or [ROOT_USER.__dict__]),
            dirs=tuple(ImageDir.from_dict(x) for x in d.get("dirs") or []),
        )

    def home(self, uid: int) -> str:
        """$HOME a runtime gives ``uid``: its /etc/passwd home in the image, "/" when it has none."""
        return next((u.home for u in self.users if u.uid == uid), "/")


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


# What Dockerfile.server declares: USER 10001:10001 (user omega), WORKDIR and HOME /home/omega
# (created by useradd, owned by the user), and the ENV of its final stage a local process can use.
SERVER_UID = 10001
SERVER_HOME = "/home/omega"
OPERATOR_IMAGE_SUFFIX = "omega-vlm-operator"
SERVER_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "PORT": "8000",
    "HOST": "0.0.0.0",
    "HF_HOME": f"{SERVER_HOME}/.cache/huggingface",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}


def server_entry(command: tuple[str, ...], match: str = SERVER_IMAGE_SUFFIX) -> ImageEntry:
    """The omega-vlm server image as Dockerfile.server builds it, running ``command``."""
    return ImageEntry(
        match,
        command,
        dict(SERVER_ENV),
        uid=SERVER_UID,
        gid=SERVER_UID,
        workdir=SERVER_HOME,
        users=(ROOT_USER, PasswdEntry("omega", SERVER_UID, SERVER_UID, SERVER_HOME)),
        dirs=(ImageDir(SERVER_HOME, SERVER_UID, SERVER_UID, 0o755),),
    )


def operator_entry(command: tuple[str, ...], match: str = OPERATOR_IMAGE_SUFFIX) -> ImageEntry:
    """The operator image as Dockerfile.operator builds it: USER 10001:10001 (omega, no home)."""
    return ImageEntry(
        match,
        command,
        {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
        uid=SERVER_UID,
        gid=SERVER_UID,
        workdir="/",
        users=(ROOT_USER, PasswdEntry("omega", SERVER_UID, SERVER_UID, "/nonexistent")),
    )


def default_entries() -> list[ImageEntry]:
    """The built-in map: the server image runs ``python -m omega_server`` from ``.venv``, the
    operator image ``python -m omega_operator``."""
    return [
        server_entry((venv_python(), "-m", "omega_server")),
        operator_entry((venv_python(), "-m", "omega_operator")),
    ]


def stand_in(match: str, command: tuple[str, ...], env: dict[str, str], uid: int | None = None) -> ImageEntry:
    """An entry that runs ``command`` for ``match``. An image the built-in table knows (any
    omega-vlm-server tag) keeps its user, dirs and env (``env`` on top); others run as root
    unless ``uid`` (then also the gid) is given."""
    known = resolve(default_entries(), match)
    if known is not None and uid is None:
        return ImageEntry(
            match, command, {**known.env, **env}, known.uid, known.gid, known.workdir, known.users, known.dirs
        )
    return ImageEntry(match, command, dict(env), uid=uid or 0, gid=uid or 0)


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
