"""The operator's pure core loads no I/O library: importing any module outside the I/O layer, in a
fresh interpreter, leaves aiohttp, kubernetes and kopf out of ``sys.modules``.

The I/O layer is the short list ``IO_MODULES``; every other module is pure by default, so a new
module joins the check without anyone adding it here.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import omega_operator
import pytest

FORBIDDEN = ("aiohttp", "kubernetes", "kopf")

# The modules that talk to the API server, to pods or to kopf (and the entry point that runs them).
IO_MODULES = {
    "omega_operator.__main__",
    "omega_operator.api_ready",
    "omega_operator.credentials",
    "omega_operator.handlers",
    "omega_operator.indexes",
    "omega_operator.kopf_settings",
    "omega_operator.kube",
    "omega_operator.prober",
    "omega_operator.reconcile",
    "omega_operator.runtime",
}
# Named by issue 11: these decide, and must stay pure.
MUST_BE_PURE = {
    "omega_operator.health_report",
    "omega_operator.fallback",
    "omega_operator.status",
    "omega_operator.builders",
    "omega_operator.drift",
    "omega_operator.conditions",
    "omega_operator.probe_reuse",
    "omega_operator.read_your_writes",
    "omega_operator.cache",
    "omega_operator.rollback",
}


def all_modules() -> list[str]:
    found = [omega_operator.__name__]
    for info in pkgutil.walk_packages(omega_operator.__path__, prefix="omega_operator."):
        found.append(info.name)
    return sorted(found)


PURE = [m for m in all_modules() if m not in IO_MODULES]


def loaded_by(module: str, tmp_path: Path) -> set[str]:
    """The top-level packages of ``sys.modules`` after importing ``module`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    # cwd elsewhere than the repository: its operator/ folder must not shadow the stdlib module.
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_the_named_modules_are_checked() -> None:
    assert set(PURE) >= MUST_BE_PURE, MUST_BE_PURE - set(PURE)
    assert set(all_modules()) >= IO_MODULES, IO_MODULES - set(all_modules())


@pytest.mark.parametrize("module", PURE)
def test_a_pure_module_loads_no_io_library(module: str, tmp_path: Path) -> None:
    leaked = loaded_by(module, tmp_path) & set(FORBIDDEN)
    assert not leaked, f"importing {module} loads {sorted(leaked)}"


@pytest.mark.parametrize(
    ("module", "library"),
    [
        ("omega_operator.prober", "aiohttp"),
        ("omega_operator.credentials", "kubernetes"),
        ("omega_operator.handlers", "kopf"),
    ],
)
def test_the_check_sees_an_io_library_when_one_is_loaded(module: str, library: str, tmp_path: Path) -> None:
    """The probe above can fail: the same check finds each library where the I/O layer loads it."""
    assert library in loaded_by(module, tmp_path)
