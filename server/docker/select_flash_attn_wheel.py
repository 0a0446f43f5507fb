"""Pick, fetch and install the pre-built flash-attn 2 wheel that matches this image's torch.

Used by ``Dockerfile.server`` (``ATTN_VARIANT=flash``). flash-attn publishes pre-built wheels on
its release page only (PyPI has the sdist alone, and building it takes 15-25 minutes), named after
the torch, CUDA, C++ ABI and Python they were built against:

    flash_attn-2.8.3+cu12torch2.8cxx11abiFALSE-cp312-cp312-linux_x86_64.whl

This script detects those versions from the installed torch, builds the name the way upstream's
``setup.py`` does (CUDA major version; older releases used ``cu118``/``cu123``, tried second),
looks for it in ``--wheel-dir`` and then at ``--release-url``, and installs it. When no wheel
matches, or the build asked for ``sdpa``, it installs nothing: the image is SDPA-only, and the
server (ATTN_IMPL=auto) reports the failed flash-attn load on /health, which the operator acts on.
Either way it prints one line saying which, and records the outcome as JSON (``--record``).

    python select_flash_attn_wheel.py --variant flash --record /etc/omega-vlm/build.json --install
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_FLASH_ATTN_VERSION = "2.8.3"
DEFAULT_RELEASE_URL = "https://github.com/Dao-AILab/flash-attention/releases/download/v{version}"

# Upstream built one CUDA minor per major for releases before 2.7 (setup.py: 11 -> 11.8, 12 -> 12.3).
_LEGACY_CUDA = {11: "118", 12: "123"}


@dataclass(frozen=True)
class Environment:
    """What a flash-attn wheel must match."""

    torch_version: str  # torch.__version__, e.g. "2.8.0+cu128"
    cuda_version: str | None  # torch.version.cuda, e.g. "12.8"; None for a CPU-only torch
    python_tag: str  # "cp312"
    cxx11_abi: bool  # torch._C._GLIBCXX_USE_CXX11_ABI
    platform_tag: str  # "linux_x86_64"

    def describe(self) -> str:
        cuda = f"CUDA {self.cuda_version}" if self.cuda_version else "no CUDA"
        abi = "TRUE" if self.cxx11_abi else "FALSE"
        return f"torch {self.torch_version}, {cuda}, {self.python_tag}, cxx11abi{abi}, {self.platform_tag}"


@dataclass
class Selection:
    """The outcome: which variant the image really is, and why."""

    requested: str
    variant: str  # "flash" or "sdpa"
    reason: str
    wheel: str | None = None  # file name of the chosen wheel
    source: str | None = None  # where it came from (path or URL)
    tried: list[str] = field(default_factory=list)
    environment: dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        if self.variant == "flash":
            return f"flash-attn: installing {self.wheel} from {self.source} -> flash image"
        return f"flash-attn: {self.reason} -> SDPA-only image"


def _major_minor(version: str) -> tuple[int, int] | None:
    parts = version.split("+", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def platform_tag(system: str | None = None, machine: str | None = None) -> str:
    """The wheel platform tag of this machine, as flash-attn names it (``linux_x86_64``)."""
    system = (system or platform.system()).lower()
    machine = (machine or platform.machine()).lower()
    return f"{system}_{machine}"


def detect() -> Environment:
    """Read the versions from the installed torch (imports torch)."""
    import torch  # the image installs torch before this runs

    return Environment(
        torch_version=str(torch.__version__),
        cuda_version=torch.version.cuda,
        python_tag=f"cp{sys.version_info.major}{sys.version_info.minor}",
        cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        platform_tag=platform_tag(),
    )


def wheel_names(flash_version: str, env: Environment) -> list[str]:
    """Candidate wheel file names for ``env``, best first; empty when no wheel can match."""
    torch_mm = _major_minor(env.torch_version)
    cuda_mm = _major_minor(env.cuda_version) if env.cuda_version else None
    if torch_mm is None or cuda_mm is None:
        return []
    torch_part = f"torch{torch_mm[0]}.{torch_mm[1]}"
    abi = "TRUE" if env.cxx11_abi else "FALSE"
    tail = f"{env.python_tag}-{env.python_tag}-{env.platform_tag}.whl"
    cudas = [str(cuda_mm[0])]
    if cuda_mm[0] in _LEGACY_CUDA:
        cudas.append(_LEGACY_CUDA[cuda_mm[0]])
    return [f"flash_attn-{flash_version}+cu{cuda}{torch_part}cxx11abi{abi}-{tail}" for cuda in cudas]


Fetcher = Callable[[str, Path], bool]


def fetch_url(url: str, dest: Path, timeout: float = 60.0) -> bool:
    """Download ``url`` to ``dest``; False when it is not there (404) or cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, dest.open("wb") as out:
            shutil.copyfileobj(resp, out)
        return True
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        print(f"flash-attn: {url}: {exc}", file=sys.stderr)
        dest.unlink(missing_ok=True)
        return False


def select(
    requested: str,
    env: Environment,
    *,
    flash_version: str = DEFAULT_FLASH_ATTN_VERSION,
    release_url: str = DEFAULT_RELEASE_URL,
    wheel_dir: Path | None = None,
    download_dir: Path,
    fetch: Fetcher = fetch_url,
) -> tuple[Selection, Path | None]:
    """Choose the variant; returns the selection and the local wheel file (None for sdpa)."""
    sel = Selection(requested=requested, variant="sdpa", reason="", environment=asdict(env))
    if requested == "sdpa":
        sel.reason = "ATTN_VARIANT=sdpa requested"
        return sel, None
    names = wheel_names(flash_version, env)
    if not names:
        sel.reason = f"no pre-built flash-attn wheel can match {env.describe()}"
        return sel, None
    for name in names:
        if wheel_dir is not None and (wheel_dir / name).is_file():
            sel.variant, sel.wheel, sel.source = "flash", name, str(wheel_dir / name)
            sel.reason = f"matched {env.describe()}"
            return sel, wheel_dir / name
    base = release_url.format(version=flash_version).rstrip("/")
    for name in names:
        url = f"{base}/{name}"
        dest = download_dir / name
        sel.tried.append(url)
        if fetch(url, dest):
            sel.variant, sel.wheel, sel.source = "flash", name, url
            sel.reason = f"matched {env.describe()}"
            return sel, dest
    sel.reason = (
        f"no pre-built flash-attn {flash_version} wheel for {env.describe()} (tried {', '.join(names)})"
    )
    return sel, None


def pip_install(wheel: Path) -> tuple[bool, str]:
    """Install ``wheel`` without touching torch; returns (ok, pip's last output line)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode == 0, lines[-1] if lines else ""


def run(
    requested: str,
    env: Environment,
    *,
    flash_version: str,
    release_url: str,
    wheel_dir: Path | None,
    record: Path | None,
    install: bool,
    fetch: Fetcher = fetch_url,
    installer: Callable[[Path], tuple[bool, str]] = pip_install,
) -> Selection:
    """Select, optionally install, print the outcome and write the record. Never fails the build."""
    with tempfile.TemporaryDirectory(prefix="flash-attn-") as tmp:
        sel, wheel = select(
            requested,
            env,
            flash_version=flash_version,
            release_url=release_url,
            wheel_dir=wheel_dir,
            download_dir=Path(tmp),
            fetch=fetch,
        )
        if wheel is not None and install:
            ok, detail = installer(wheel)
            if not ok:
                sel.variant = "sdpa"
                sel.reason = f"installing {sel.wheel} failed ({detail})"
    print(sel.summary(), flush=True)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(asdict(sel), indent=2, sort_keys=True) + "\n")
    return sel


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--variant", choices=["flash", "sdpa"], default="flash", help="ATTN_VARIANT of the build")
    p.add_argument("--flash-attn-version", default=DEFAULT_FLASH_ATTN_VERSION)
    p.add_argument("--release-url", default=DEFAULT_RELEASE_URL, help="base URL; {version} is filled in")
    p.add_argument("--wheel-dir", type=Path, default=None, help="look here for the wheel first")
    p.add_argument("--record", type=Path, default=None, help="write the outcome here as JSON")
    p.add_argument("--install", action="store_true", help="pip install the chosen wheel")
    p.add_argument("--print-names", action="store_true", help="only print the candidate wheel names")
    args = p.parse_args(argv)
    env = detect()
    if args.print_names:
        for name in wheel_names(args.flash_attn_version, env):
            print(name)
        return 0
    run(
        args.variant,
        env,
        flash_version=args.flash_attn_version,
        release_url=args.release_url,
        wheel_dir=args.wheel_dir,
        record=args.record,
        install=args.install,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
