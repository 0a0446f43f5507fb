"""The flash-attn wheel selection of Dockerfile.server (server/docker/select_flash_attn_wheel.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "server" / "docker" / "select_flash_attn_wheel.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("select_flash_attn_wheel", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


sel = _load()
H100_ENV = sel.Environment("2.8.0+cu128", "12.8", "cp312", True, "linux_x86_64")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            H100_ENV,
            [
                "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
                "flash_attn-2.8.3+cu123torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
            ],
        ),
        (
            sel.Environment("2.4.1+cu118", "11.8", "cp310", False, "linux_x86_64"),
            [
                "flash_attn-2.8.3+cu11torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl",
                "flash_attn-2.8.3+cu118torch2.4cxx11abiFALSE-cp310-cp310-linux_x86_64.whl",
            ],
        ),
        (  # CUDA 13: no legacy name; torch's local version and patch level do not matter
            sel.Environment("2.11.0a0+git1234", "13.0", "cp312", True, "linux_aarch64"),
            ["flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp312-cp312-linux_aarch64.whl"],
        ),
        (sel.Environment("2.13.0+cpu", None, "cp311", True, "linux_x86_64"), []),  # CPU torch
        (sel.Environment("garbage", "12.1", "cp311", True, "linux_x86_64"), []),
    ],
)
def test_wheel_names(env: object, names: list[str]) -> None:
    assert sel.wheel_names("2.8.3", env) == names


def test_platform_tag() -> None:
    assert sel.platform_tag("Linux", "x86_64") == "linux_x86_64"
    assert sel.platform_tag("Linux", "AARCH64") == "linux_aarch64"


class FakeRelease:
    """A release page that has exactly the given files; records what was asked for."""

    def __init__(self, *files: str) -> None:
        self.files = set(files)
        self.asked: list[str] = []

    def __call__(self, url: str, dest: Path) -> bool:
        self.asked.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in self.files:
            return False
        dest.write_bytes(b"wheel:" + name.encode())
        return True


def test_matching_wheel_on_the_release_page(tmp_path: Path) -> None:
    name = sel.wheel_names("2.8.3", H100_ENV)[0]
    release = FakeRelease(name)
    s, wheel = sel.select(
        "flash", H100_ENV, download_dir=tmp_path, fetch=release, release_url="https://rel/v{version}"
    )
    assert s.variant == "flash" and s.wheel == name
    assert release.asked == [f"https://rel/v2.8.3/{name}"]
    assert wheel is not None and wheel.read_bytes() == b"wheel:" + name.encode()
    assert "installing " + name in s.summary()


def test_legacy_name_is_tried_second(tmp_path: Path) -> None:
    legacy = sel.wheel_names("2.6.3", H100_ENV)[1]
    release = FakeRelease(legacy)
    s, _ = sel.select("flash", H100_ENV, flash_version="2.6.3", download_dir=tmp_path, fetch=release)
    assert s.variant == "flash" and s.wheel == legacy and len(release.asked) == 2


def test_no_matching_wheel_falls_back_to_sdpa(tmp_path: Path) -> None:
    release = FakeRelease("flash_attn-2.8.3+cu12torch2.7cxx11abiTRUE-cp312-cp312-linux_x86_64.whl")
    s, wheel = sel.select("flash", H100_ENV, download_dir=tmp_path, fetch=release)
    assert s.variant == "sdpa" and wheel is None
    assert s.tried == release.asked and len(s.tried) == 2
    assert "no pre-built flash-attn 2.8.3 wheel for torch 2.8.0+cu128, CUDA 12.8, cp312" in s.reason
    assert s.summary().endswith("-> SDPA-only image")


def test_cpu_torch_and_sdpa_request_fetch_nothing(tmp_path: Path) -> None:
    release = FakeRelease()
    cpu = sel.Environment("2.13.0+cpu", None, "cp311", True, "linux_x86_64")
    s, _ = sel.select("flash", cpu, download_dir=tmp_path, fetch=release)
    assert s.variant == "sdpa" and "no CUDA" in s.reason
    s, _ = sel.select("sdpa", H100_ENV, download_dir=tmp_path, fetch=release)
    assert s.variant == "sdpa" and s.reason == "ATTN_VARIANT=sdpa requested"
    assert release.asked == []


def test_local_wheel_dir_wins(tmp_path: Path) -> None:
    name = sel.wheel_names("2.8.3", H100_ENV)[0]
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / name).write_bytes(b"local")
    release = FakeRelease(name)
    s, wheel = sel.select(
        "flash", H100_ENV, wheel_dir=tmp_path / "wheels", download_dir=tmp_path, fetch=release
    )
    assert s.variant == "flash" and wheel == tmp_path / "wheels" / name and release.asked == []


def test_run_installs_and_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = sel.wheel_names("2.8.3", H100_ENV)[0]
    installed: list[str] = []

    def installer(wheel: Path) -> tuple[bool, str]:
        installed.append(wheel.name)
        return True, "Successfully installed flash-attn-2.8.3"

    record = tmp_path / "etc" / "build.json"
    s = sel.run(
        "flash",
        H100_ENV,
        flash_version="2.8.3",
        release_url=sel.DEFAULT_RELEASE_URL,
        wheel_dir=None,
        record=record,
        install=True,
        fetch=FakeRelease(name),
        installer=installer,
    )
    assert installed == [name] and s.variant == "flash"
    data = json.loads(record.read_text())
    assert data["variant"] == "flash" and data["wheel"] == name and data["requested"] == "flash"
    assert data["environment"]["torch_version"] == "2.8.0+cu128"
    assert capsys.readouterr().out.startswith(f"flash-attn: installing {name}")


def test_run_failed_install_is_sdpa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = sel.wheel_names("2.8.3", H100_ENV)[0]
    s = sel.run(
        "flash",
        H100_ENV,
        flash_version="2.8.3",
        release_url=sel.DEFAULT_RELEASE_URL,
        wheel_dir=None,
        record=tmp_path / "b.json",
        install=True,
        fetch=FakeRelease(name),
        installer=lambda w: (False, "ERROR: wheel is not supported on this platform"),
    )
    assert s.variant == "sdpa" and "not supported" in s.reason
    assert json.loads((tmp_path / "b.json").read_text())["variant"] == "sdpa"
    assert "-> SDPA-only image" in capsys.readouterr().out


def test_script_on_this_machine(tmp_path: Path) -> None:
    """The real detection against the installed (CPU) torch: no wheel can match, SDPA-only."""
    record = tmp_path / "build.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--variant",
            "flash",
            "--record",
            str(record),
            "--install",
            "--release-url",
            "http://127.0.0.1:9/{version}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    import torch

    data = json.loads(record.read_text())
    assert data["environment"]["torch_version"] == str(torch.__version__)
    assert data["environment"]["python_tag"] == f"cp{sys.version_info.major}{sys.version_info.minor}"
    if torch.version.cuda is None:
        assert data["variant"] == "sdpa"
        assert "SDPA-only image" in proc.stdout
