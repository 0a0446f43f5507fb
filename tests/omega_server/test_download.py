"""`omega-vlm-server download` against the Hub stand-in: once per cache, then offline reads only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omega_server.download import DownloadError, marker_path, parse_hf_uri

from tests.hub_standin import HubStandIn

REPO = "omega-test/tiny"


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hub of one repository: a config and a 4 MB weight file (the protocol, not the model, is tested)."""
    root = tmp_path_factory.mktemp("hub")
    repo = root / REPO
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_text('{"model_type": "tiny"}')
    (repo / "model.safetensors").write_bytes(os.urandom(4 << 20))
    (repo / "sub" / "extra.txt").write_text("x")
    return root


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "omega_server", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _env(hub: HubStandIn, home: Path, model: str = f"hf://{REPO}") -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "MODEL_PATH": model,
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0"}  # fmt: skip


def test_concurrent_downloads_fetch_once_then_never_again(hub_root: Path, tmp_path: Path) -> None:
    with HubStandIn(hub_root) as hub:
        env = _env(hub, tmp_path / "cache")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "omega_server", "download"], env=env, stdout=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        assert (
            sum("downloaded in" in o for o in outs) == 1 and sum("already complete" in o for o in outs) == 2
        )
        assert hub.downloads == {
            f"{REPO}/config.json": 1,
            f"{REPO}/model.safetensors": 1,
            f"{REPO}/sub/extra.txt": 1,
        }
        before = hub.stats()
        again = _run(env, "download")
        assert again.returncode == 0 and "already complete (no download)" in again.stdout
        assert hub.stats() == before  # not a single request, not even the model info API
        # the server container reads the snapshot offline
        offline = {**env, "HF_HUB_OFFLINE": "1"}
        code = "from omega_server.models import resolve_model_path as r; print(r(__import__('os').environ['MODEL_PATH']))"
        read = subprocess.run(
            [sys.executable, "-c", code], env=offline, capture_output=True, text=True, timeout=120
        )
        assert read.returncode == 0, read.stderr
        snapshot = Path(read.stdout.strip())
        assert (snapshot / "model.safetensors").stat().st_size == 4 << 20
        assert marker_path(tmp_path / "cache", parse_hf_uri(f"hf://{REPO}")).read_text().strip() == str(
            snapshot
        )
        assert hub.stats() == before


def test_unreachable_hub_is_one_fatal_line_naming_model_path(tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path), "MODEL_PATH": f"hf://{REPO}@v2",
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}  # fmt: skip
    r = _run(env, "download")
    assert r.returncode == 1
    fatal = [line for line in r.stderr.splitlines() if line.startswith("fatal:")]
    assert len(fatal) == 1 and f"MODEL_PATH hf://{REPO}@v2: cannot download {REPO}" in fatal[0]
    assert not marker_path(tmp_path, parse_hf_uri(f"hf://{REPO}@v2")).exists()


def test_non_hub_model_path_has_nothing_to_fetch(tmp_path: Path) -> None:
    r = _run({**os.environ, "MODEL_PATH": "file:///models/m", "HF_HOME": str(tmp_path)}, "download")
    assert r.returncode == 0 and "nothing to fetch" in r.stdout


@pytest.mark.parametrize("bad", ["hf://only-org", "hf://org/", "hf:///name"])
def test_malformed_hub_uri(bad: str) -> None:
    with pytest.raises(DownloadError, match="expected hf://org/name"):
        parse_hf_uri(bad)
