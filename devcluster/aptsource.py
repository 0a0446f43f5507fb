"""A private apt sources list for ``apt-get source``, built from the machine's own Debian sources.

The repository never names a package registry: the archive URI is read from the machine's apt
configuration, and the private list is used through ``-o Dir::Etc::...`` options so that the
system's apt configuration stays untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEB822_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
ONE_LINE_SOURCES = Path("/etc/apt/sources.list")


@dataclass(frozen=True)
class AptSource:
    """One archive entry: where it lives and which suites/components it serves."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None


def parse_deb822(text: str) -> list[AptSource]:
    """Parse a deb822 ``.sources`` file into entries of type ``deb``/``deb-src``."""
    entries: list[AptSource] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            if raw[0] in " \t" and key:
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if not fields.get("uris") or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields["uris"].split():
            entries.append(
                AptSource(
                    uri=uri,
                    suites=tuple(fields.get("suites", "").split()),
                    components=tuple(fields.get("components", "main").split()),
                    signed_by=fields.get("signed-by") or None,
                )
            )
    return entries


def parse_one_line(text: str) -> list[AptSource]:
    """Parse classic one-line ``deb URI suite comp...`` entries."""
    entries: list[AptSource] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        words = words[1:]
        signed_by = None
        if words[0].startswith("["):
            opts = []
            while words and not words[0].endswith("]"):
                opts.append(words.pop(0))
            opts.append(words.pop(0))
            for opt in " ".join(opts).strip("[]").split():
                if opt.startswith("signed-by="):
                    signed_by = opt.split("=", 1)[1]
        entries.append(AptSource(uri=words[0], suites=(words[1],), components=tuple(words[2:])))
        if signed_by:
            entries[-1] = AptSource(words[0], (words[1],), tuple(words[2:]), signed_by)
    return entries


def machine_sources() -> list[AptSource]:
    """The machine's configured Debian archives (deb822 file first, then sources.list)."""
    entries: list[AptSource] = []
    if DEB822_SOURCES.exists():
        entries += parse_deb822(DEB822_SOURCES.read_text())
    if ONE_LINE_SOURCES.exists():
        entries += parse_one_line(ONE_LINE_SOURCES.read_text())
    return entries


def render_deb_src(entries: list[AptSource], suite: str) -> str:
    """``deb-src`` lines for every archive that serves ``suite`` (or its updates/security suites)."""
    lines: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        for s in entry.suites:
            if s != suite and not s.startswith(suite + "-"):
                continue
            opt = f"[signed-by={entry.signed_by}] " if entry.signed_by else ""
            line = f"deb-src {opt}{entry.uri} {s} {' '.join(entry.components) or 'main'}"
            if line not in seen:
                seen.add(line)
                lines.append(line)
    if not lines:
        raise RuntimeError(
            f"no Debian archive for suite {suite!r} in {DEB822_SOURCES} or {ONE_LINE_SOURCES}; "
            "cannot fetch the kubernetes source package"
        )
    return "\n".join(lines) + "\n"
