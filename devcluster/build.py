"""``python -m devcluster build``: build the control plane from Debian's kubernetes source package.

Steps (DESIGN.md section 5): install Go, etcd and reflect2 from Debian; fetch the source package
through a private sources list; unpack the upstream tree; swap the vendored reflect2 for Debian's;
run upstream's ``make WHAT=...`` in GOPATH mode; keep the three binaries in the cache. Idempotent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from devcluster import aptsource
from devcluster.settings import BINARIES, KUBE_RELEASE, KubeRelease, bin_dir, release_dir

BUILD_PACKAGES = ("golang-github-modern-go-reflect2-dev", "make", "gcc", "rsync")


def runtime_packages() -> tuple[str, ...]:
    """What a running cluster needs: etcd, Prometheus (``up --prometheus``; promtool comes with it),
    and Debian's kubectl when the machine has none."""
    packages = ("etcd-server", "prometheus")
    return packages if shutil.which("kubectl") else (*packages, "kubernetes-client")


REFLECT2_SRC = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
STAMP = "BUILT"


def say(msg: str) -> None:
    """Progress line on stderr, prefixed so it stands out in ``make`` output."""
    print(f"[devcluster build] {msg}", file=sys.stderr, flush=True)


def is_built(release: KubeRelease = KUBE_RELEASE) -> bool:
    """True when the cache holds all binaries of ``release``."""
    d = bin_dir(release)
    return (release_dir(release) / STAMP).exists() and all((d / b).is_file() for b in BINARIES)


def _missing_packages(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for pkg in packages:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    return missing


def _privileged(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return cmd
    if shutil.which("sudo"):
        return ["sudo", "-n", *cmd]
    raise RuntimeError(f"need root (or sudo) to run: {' '.join(cmd)}")


def install_packages(packages: tuple[str, ...]) -> None:
    """apt-get install those of ``packages`` that are missing."""
    missing = _missing_packages(packages)
    if not missing:
        say("Debian packages present: " + ", ".join(packages))
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = subprocess.run(
        _privileged(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]),
        env=env,
        check=False,
    )
    if r.returncode != 0:
        # A fresh machine may have empty package lists.
        subprocess.run(_privileged(["apt-get", "update", "-q"]), env=env, check=True)
        subprocess.run(
            _privileged(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]),
            env=env,
            check=True,
        )


def _apt_opts(apt_dir: Path) -> list[str]:
    return [
        "-o",
        f"Dir::Etc::SourceList={apt_dir / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o",
        f"Dir::Cache={apt_dir / 'cache'}",
        "-o",
        "APT::Sandbox::User=root",
    ]


def fetch_source(release: KubeRelease, work: Path) -> Path:
    """Download the Debian source package (private apt state); return the .orig.tar.gz."""
    existing = sorted(work.glob("kubernetes_*.orig.tar.gz"))
    if existing:
        say(f"source package already fetched: {existing[-1].name}")
        return existing[-1]
    apt_dir = work / "apt"
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text(
        aptsource.render_deb_src(aptsource.machine_sources(), release.debian_suite)
    )
    opts = _apt_opts(apt_dir)
    say("apt-get update (private deb-src list)")
    subprocess.run(["apt-get", "-q", *opts, "update"], check=True, stdout=subprocess.DEVNULL)
    say("apt-get source --download-only kubernetes")
    subprocess.run(
        ["apt-get", "-q", *opts, "source", "--download-only", "kubernetes"],
        cwd=work,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    found = sorted(work.glob("kubernetes_*.orig.tar.gz"))
    if not found:
        raise RuntimeError(f"apt-get source gave no kubernetes_*.orig.tar.gz in {work}")
    return found[-1]


def unpack(tarball: Path, dest: Path) -> Path:
    """Untar the upstream tree into ``dest``; return the tree root (the folder with the Makefile)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    say(f"unpacking {tarball.name}")
    with tarfile.open(tarball) as tf:
        tf.extractall(dest, filter="tar")
    roots = [p.parent for p in dest.glob("*/Makefile")] or ([dest] if (dest / "Makefile").exists() else [])
    if not roots:
        raise RuntimeError(f"no Makefile in {tarball}")
    return roots[0]


def swap_reflect2(tree: Path) -> None:
    """Replace vendored modern-go/reflect2 with Debian's (the vendored one crashes the apiserver under Go 1.19)."""
    vendored = tree / "vendor" / "github.com" / "modern-go" / "reflect2"
    if not REFLECT2_SRC.is_dir():
        raise RuntimeError(f"{REFLECT2_SRC} missing: install golang-github-modern-go-reflect2-dev")
    shutil.rmtree(vendored, ignore_errors=True)
    shutil.copytree(REFLECT2_SRC, vendored, ignore=shutil.ignore_patterns("*_test.go", "tests"))
    say("vendor/github.com/modern-go/reflect2 replaced by Debian's golang-github-modern-go-reflect2-dev")


def make_env(release: KubeRelease, work: Path) -> dict[str, str]:
    """Environment of upstream's make: Go first on PATH, GOPATH mode, version stamps."""
    major, minor, _ = release.version.split(".")
    return {
        **os.environ,
        "PATH": f"{release.go_root}/bin:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOCACHE": str(work / "gocache"),
        "KUBE_GIT_VERSION": f"v{release.version}",
        "KUBE_GIT_MAJOR": major,
        "KUBE_GIT_MINOR": minor,
        "KUBE_GIT_TREE_STATE": "clean",
    }


def run_make(release: KubeRelease, tree: Path, work: Path) -> None:
    """Upstream's own build, output to work/make.log with a heartbeat line every 30 s."""
    what = " ".join(f"cmd/{b}" for b in BINARIES)
    log_path = work / "make.log"
    say(f"make WHAT={what!r} with {release.go_root} (about 4 minutes on 2 cores; log: {log_path})")
    start = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            say(f"  still compiling ... {time.monotonic() - start:.0f} s")

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                ["make", f"WHAT={what}"],
                cwd=tree,
                env=make_env(release, work),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.startswith("+++") or "error" in line.lower():
                    say("  " + line.rstrip())
            rc = proc.wait()
    finally:
        done.set()
    if rc != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"make failed (exit {rc}); last lines of {log_path}:\n{tail}")
    say(f"make done in {time.monotonic() - start:.0f} s")


def build(release: KubeRelease = KUBE_RELEASE, keep_tree: bool = False) -> Path:
    """Build the control-plane binaries of ``release`` into the cache (nothing to do when cached)."""
    out = bin_dir(release)
    if is_built(release):
        say(f"kubernetes v{release.version} already built: {out}")
        install_packages(runtime_packages())  # cheap when present
        return out
    t0 = time.monotonic()
    install_packages((release.go_package, *BUILD_PACKAGES, *runtime_packages()))
    rdir = release_dir(release)
    work = rdir / "work"
    work.mkdir(parents=True, exist_ok=True)
    tarball = fetch_source(release, work)
    # Debian names it <upstream>.orig or <x>+really<upstream>.orig: make sure it is the release we want.
    if not re.search(rf"(_|really){re.escape(release.version)}\.orig\.tar", tarball.name):
        raise RuntimeError(
            f"{tarball.name} is not Kubernetes {release.version}: adjust KUBE_RELEASE in settings.py"
        )
    tree = unpack(tarball, work / "src")
    swap_reflect2(tree)
    run_make(release, tree, work)
    built = next((p for p in (tree / "_output").glob("**/bin") if (p / BINARIES[0]).is_file()), None)
    if built is None:
        raise RuntimeError(f"make succeeded but no binaries under {tree / '_output'}")
    out.mkdir(parents=True, exist_ok=True)
    for b in BINARIES:
        tmp = out / f".{b}.tmp"
        shutil.copy2(built / b, tmp)
        tmp.replace(out / b)
    (rdir / STAMP).write_text(f"v{release.version} from {tarball.name}\n")
    if not keep_tree:
        # The tree and Go cache take ~2 GB; only the binaries are needed.
        shutil.rmtree(work / "src", ignore_errors=True)
        shutil.rmtree(work / "gocache", ignore_errors=True)
    say(f"built kubernetes v{release.version} in {time.monotonic() - t0:.0f} s -> {out}")
    return out
