"""Settings of devcluster: the Kubernetes release to build and where things live."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KubeRelease:
    """A Kubernetes release that builds from a Debian ``kubernetes`` source package."""

    version: str  # upstream version the tree really holds (KUBE_GIT_VERSION without the "v")
    debian_suite: str  # Debian suite whose source package holds it
    go_root: str  # Debian's Go toolchain used for the build
    go_package: str  # the Debian package that provides go_root


# The one setting that names the release. Debian bookworm ships 1.20.5+really1.20.2 (the newest
# kubernetes source package in Debian that still has the server components; trixie/sid ship kubectl only).
KUBE_RELEASE = KubeRelease(
    version="1.20.2",
    debian_suite="bookworm",
    go_root="/usr/lib/go-1.19",
    go_package="golang-1.19-go",
)

# The control-plane binaries the build produces.
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")

CACHE_ENV = "OMEGA_VLM_K8S_CACHE"


def cache_root() -> Path:
    """Base of the binary cache: ``$OMEGA_VLM_K8S_CACHE`` or ``~/.cache/omega-vlm/k8s``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "omega-vlm" / "k8s"


def release_dir(release: KubeRelease = KUBE_RELEASE) -> Path:
    """Cache folder of one release: ``<cache_root>/<version>/``."""
    return cache_root() / release.version


def bin_dir(release: KubeRelease = KUBE_RELEASE) -> Path:
    """Where the built control-plane binaries lie."""
    return release_dir(release) / "bin"


def repo_root() -> Path:
    """The repository root (the folder that holds the devcluster package)."""
    return Path(__file__).resolve().parent.parent


def default_state_dir() -> Path:
    """State folder of the CLI cluster: ``<repo>/.devcluster`` (git-ignored)."""
    return repo_root() / ".devcluster"
