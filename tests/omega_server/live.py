"""Real servers for the HTTP tests: uvicorn in a thread (in-process, engine counters visible) or
`python -m omega_server` in a subprocess (the real entry point), both on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from omega_server.app import create_app
from omega_server.listen import listen_socket
from omega_server.settings import load_settings
from omega_server.state import ServerState
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

#: The shared server's limits; tests that probe limits read them from here.
SHARED_ENV = {
    "SERVED_MODEL_NAME": "tiny-vlm",
    "API_KEY": API_KEY,
    "ATTN_IMPL": "sdpa",
    "MAX_BATCH_SIZE": "2",
    "MAX_QUEUE": "2",
    "MAX_MODEL_LENGTH": "1024",
    "MAX_IMAGES_PER_REQUEST": "2",
    "MAX_IMAGE_BYTES": str(64 * 1024),
    "MAX_IMAGE_PIXELS": str(512 * 512),
    "IMAGE_FETCH_TIMEOUT": "1.5",
    "ALLOW_PRIVATE_IMAGE_URLS": "true",  # the image URL tests fetch from a server on 127.0.0.1
    "DEFAULT_MAX_TOKENS": "16",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(url: str, timeout: float = 180.0, proc: subprocess.Popen[str] | None = None) -> dict[str, Any]:
    """Poll /health until 200; returns its body."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            last = r.json()
            if r.status_code == 200:
                return dict(last)
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready after {timeout}s: {last}")


class ThreadServer:
    """`create_app(settings)` under uvicorn in a daemon thread; the app loads the engine itself."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.settings = load_settings(dict(env))
        self.app = create_app(self.settings)
        self.sock = listen_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def state(self) -> ServerState:
        state: ServerState = self.app.state.omega
        return state

    @property
    def engine(self) -> Any:
        return self.state.engine

    def start(self) -> ThreadServer:
        self.thread.start()
        wait_ready(self.url)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


class ProcessServer:
    """`python -m omega_server` as a child process with the given environment."""

    def __init__(self, env: Mapping[str, str], extra_pythonpath: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if k not in SHARED_ENV and k != "MODEL_PATH"}
        full.update(
            {"HOST": "127.0.0.1", "PORT": str(self.port), "OMP_NUM_THREADS": "1", "LOG_LEVEL": "warning"}
        )
        full.update(env)
        if extra_pythonpath:
            full["PYTHONPATH"] = os.pathsep.join(p for p in (extra_pythonpath, full.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "omega_server"],
            env=full,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self, timeout: float = 180.0) -> dict[str, Any]:
        return wait_ready(self.url, timeout, self.proc)

    def stop(self) -> str:
        """Terminate; returns the combined output."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        out, _ = self.proc.communicate()
        return out or ""


def tiny(request: pytest.FixtureRequest, arch: str = "qwen2_vl") -> Path:
    """A tiny checkpoint of `arch` from the session's `tiny_checkpoint` factory (conftest)."""
    path: Path = request.getfixturevalue("tiny_checkpoint")(arch)
    return path


def shared_server(request: pytest.FixtureRequest) -> ThreadServer:
    """One server for the whole session (API tests, error tests, openai-client tests)."""
    config = request.config
    server: ThreadServer | None = getattr(config, "_omega_shared_server", None)
    if server is None:
        server = ThreadServer({"MODEL_PATH": str(tiny(request)), **SHARED_ENV}).start()
        config._omega_shared_server = server  # type: ignore[attr-defined]
        config.add_cleanup(server.stop)
    return server


def png_bytes(
    size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG"
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def noise_png(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress (random pixels)."""
    buf = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buf, "PNG")
    return buf.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def image_message(text: str = "Describe the image.", url: str | None = None) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url or data_url(png_bytes())}},
        ],
    }


def sse_events(lines: Iterator[str]) -> list[Any]:
    """Parse SSE `data:` lines; `[DONE]` is kept as the string."""
    events: list[Any] = []
    for line in lines:
        if not line.startswith("data: "):
            assert line == "", f"unexpected SSE line {line!r}"
            continue
        payload = line[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
