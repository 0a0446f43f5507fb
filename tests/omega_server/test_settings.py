"""Settings from the environment, and start-up failures of `python -m omega_server`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omega_server.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_defaults_and_parsing(tmp_path: Path) -> None:
    s = load_settings({"MODEL_PATH": str(tmp_path)})
    assert (s.attn_impl, s.max_batch_size, s.max_model_length, s.dtype) == ("auto", 4, 8192, "auto")
    assert (s.host, s.port, s.api_key) == ("0.0.0.0", 8000, None)
    assert s.model_name == tmp_path.name
    s = load_settings(
        {
            "MODEL_PATH": "hf://org/omega-17@main",
            "SERVED_MODEL_NAME": "omega-17-vl-exp",
            "ATTN_IMPL": "Flash_Attention_2",
            "MAX_BATCH_SIZE": "8",
            "MAX_MODEL_LENGTH": "4096",
            "DTYPE": "bfloat16",
            "PORT": "9000",
            "API_KEY": "s3cret",
            "UNRELATED": "ignored",
        }
    )
    assert s.attn_impl == "flash_attention_2" and s.max_batch_size == 8 and s.max_model_length == 4096
    assert s.model_name == "omega-17-vl-exp" and s.port == 9000
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert load_settings({"MODEL_PATH": "file:///models/omega-17/"}).model_name == "omega-17"
    assert load_settings({"MODEL_PATH": "/m", "API_KEY": ""}).api_key is None


def test_settings_reach_the_engine_config(tmp_path: Path) -> None:
    from omega_server.app import engine_config

    default = engine_config(load_settings({"MODEL_PATH": str(tmp_path)}))
    assert default.compile is False and default.max_batch_size == 4 and default.fast_decode is True
    tuned = engine_config(
        load_settings(
            {
                "MODEL_PATH": str(tmp_path),
                "COMPILE": "true",
                "MAX_BATCH_SIZE": "16",
                "MAX_QUEUE": "7",
                "FAST_DECODE": "false",
            }
        )
    )
    assert (tuned.compile, tuned.max_batch_size, tuned.max_queue, tuned.fast_decode) == (True, 16, 7, False)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "MODEL_PATH"),
        ({"MODEL_PATH": "  "}, "MODEL_PATH"),
        ({"ATTN_IMPL": "flash"}, "ATTN_IMPL"),
        ({"MAX_BATCH_SIZE": "four"}, "MAX_BATCH_SIZE"),
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE"),
        ({"MAX_MODEL_LENGTH": "-1"}, "MAX_MODEL_LENGTH"),
        ({"DTYPE": "int4"}, "DTYPE"),
        ({"PORT": "70000"}, "PORT"),
        ({"MAX_QUEUE": "0"}, "MAX_QUEUE"),
        ({"IMAGE_FETCH_TIMEOUT": "soon"}, "IMAGE_FETCH_TIMEOUT"),
        ({"COMPILE": "maybe"}, "COMPILE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    full = {"MODEL_PATH": "/models/x", **env} if variable != "MODEL_PATH" else env
    with pytest.raises(SettingsError) as exc:
        load_settings(full)
    assert variable in str(exc.value)


def _run(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "omega_server"],
        env={**base, "OMP_NUM_THREADS": "1", "HOST": "127.0.0.1", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_environment_exits_nonzero_naming_the_variable(tmp_path: Path) -> None:
    res = _run({"MODEL_PATH": str(tmp_path), "MAX_BATCH_SIZE": "lots", "PORT": str(free_port())}, timeout=60)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fatal:") and "MAX_BATCH_SIZE" in last and "lots" in last
    res = _run({"PORT": str(free_port())}, timeout=60)
    assert res.returncode != 0 and "MODEL_PATH" in res.stderr.strip().splitlines()[-1]


def test_missing_model_path_is_fatal(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    res = _run({"MODEL_PATH": str(missing), "PORT": str(free_port())})
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fatal:") and "MODEL_PATH" in last and str(missing) in last


def test_port_in_use_is_fatal(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = _run({"MODEL_PATH": str(tmp_path), "PORT": str(port)}, timeout=60)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fatal:") and "PORT" in last
