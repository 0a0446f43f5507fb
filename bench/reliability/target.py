"""Start the real server (`python -m omega_server`) on a tiny random checkpoint, for the experiments."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
API_KEY = "reliability-key-0123"

#: Limits that keep every request short on the CPU: a generation is at most a few dozen tokens.
FUZZ_ENV = {
    "SERVED_MODEL_NAME": "tiny-vlm",
    "API_KEY": API_KEY,
    "ATTN_IMPL": "sdpa",
    "MAX_BATCH_SIZE": "4",
    "MAX_QUEUE": "64",
    "MAX_MODEL_LENGTH": "512",
    "DEFAULT_MAX_TOKENS": "8",
    "MAX_IMAGES_PER_REQUEST": "2",
    "MAX_IMAGE_BYTES": str(2 * 1024 * 1024),
    "IMAGE_FETCH_TIMEOUT": "1.0",
}


class TinyServer:
    """The server as a child process on 127.0.0.1 and a free port, over a tiny checkpoint of ``arch``."""

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None, arch: str = "qwen2_vl") -> None:
        from omega_server import tiny

        checkpoint = workdir / f"tiny-{arch}"
        if not checkpoint.exists():
            tiny.build(arch, checkpoint)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        full = dict(os.environ)
        full.update(FUZZ_ENV)
        full.update(
            {
                "MODEL_PATH": str(checkpoint),
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "OMP_NUM_THREADS": "1",
                "LOG_LEVEL": "warning",
            }
        )
        full.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omega_server"],
            env=full,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server at {self.url} not ready after {timeout}s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if self.proc.poll() is None:
            return ""
        out, _ = self.proc.communicate()
        return out or ""

    def stop(self) -> str:
        """Terminate; returns the combined output."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.output()
