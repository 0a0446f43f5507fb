"""The HTTP driver: the real server app (``omega_server.app.create_app``) serving an engine, in this
process under uvicorn, and the streaming client (``bench.vlmbench.client``) in another process.

The app is the one ``python -m omega_server`` runs (routes, validation, image decoding, SSE, metrics),
with the engine the bench already loaded, so the weights are built once and the engine and HTTP
numbers come from the same model. The client can also be pointed at any running server (``--url``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.vlmbench.scenarios import Scenario
from bench.vlmbench.stats import RequestTiming

ROOT = Path(__file__).resolve().parents[2]


class InProcessServer:
    """uvicorn serving ``create_app(settings, engine)`` on 127.0.0.1 in a background thread."""

    def __init__(self, engine: Any, *, model_path: str, served_model_name: str, **settings: Any) -> None:
        import uvicorn
        from omega_server.app import create_app
        from omega_server.listen import listen_socket
        from omega_server.settings import Settings

        self.settings = Settings(
            model_path=model_path, served_model_name=served_model_name, log_level="warning", **settings
        )
        self.app = create_app(self.settings, engine=engine)
        self.sock = listen_socket()
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_level="warning", server_header=False, timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="bench-uvicorn", daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> InProcessServer:
        """Start serving and wait until /health says ready."""
        import httpx

        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the in-process server at {self.url} did not become ready in {timeout_s} s")

    def health(self) -> dict[str, Any]:
        """The /health body."""
        import httpx

        body: dict[str, Any] = httpx.get(self.url + "/health", timeout=10).json()
        return body

    def stop(self) -> None:
        """Stop uvicorn (the engine stays the caller's)."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def client_env() -> dict[str, str]:
    """Environment for the client process: the repo root importable, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def http_cell(
    url: str,
    *,
    model: str,
    scenario: Scenario,
    concurrency: int,
    time_limit_s: float,
    seed: int = 0,
    max_tokens: int | None = None,
    api_key: str | None = None,
    warm_up: bool = True,
    warm_up_path: str = "/v1/models",
    keep_text: bool = False,
) -> tuple[list[RequestTiming], dict[str, Any]]:
    """Run one HTTP cell of ``scenario`` through the client process; returns the request timings and the
    client's ``meta`` (e.g. ``burst_at``). ``max_tokens`` overrides every request's output length.

    ``warm_up`` (the default) opens the client's connections before the clock starts (see ``client``).
    """
    spec = {
        "url": url,
        "model": model,
        "scenario": scenario.to_dict(),
        "concurrency": concurrency,
        "time_limit_s": time_limit_s,
        "seed": seed,
        "max_tokens": max_tokens,
        "api_key": api_key,
        "warm_up": warm_up,
        "warm_up_path": warm_up_path,
        "keep_text": keep_text,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench.vlmbench.client", json.dumps(spec)],
        cwd=ROOT,
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=time_limit_s + 180,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client failed ({proc.returncode}): {proc.stderr[-2000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    timings = [
        RequestTiming(
            submitted=r["submitted"],
            events=[(float(t), int(n)) for t, n in r["events"]],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            finish_reason=r["finish_reason"],
            error=r["error"],
            first_chunk=r.get("first_chunk"),
            sent=r.get("sent"),
            server_timing={str(k): float(v) for k, v in (r.get("server_timing") or {}).items()},
            group=str(r.get("group") or ""),
            text=r.get("text"),
        )
        for r in raw["timings"]
    ]
    return timings, dict(raw.get("meta") or {})
