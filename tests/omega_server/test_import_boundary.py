"""The HTTP layer starts without torch: it imports only the engine's types and errors (the engine itself,
with torch and transformers, is imported when the model loads). Checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HTTP_MODULES = [
    "omega_server.app",
    "omega_server.routes.ops",
    "omega_server.routes.openai",
    "omega_server.serving",
    "omega_server.chat_request",
    "omega_server.sse",
    "omega_server.protocol",
    "omega_server.errors",
    "omega_server.images",
    "omega_server.state",
    "omega_server.health",
    "omega_server.http_config",
    "omega_server.middleware",
    "omega_server.metrics",
    "omega_server.settings",
    "omega_server.engine",
    "omega_server.engine.types",
    "omega_server.engine.errors",
]

HEAVY = ["torch", "transformers"]

SCRIPT = """
import asyncio, importlib, json, sys, tempfile
modules = json.loads(sys.argv[1])
for name in modules:
    importlib.import_module(name)
after_import = sorted(m for m in ("torch", "transformers") if m in sys.modules)

import httpx
from omega_server.app import create_app
from omega_server.settings import Settings

app = create_app(Settings(model_path=tempfile.mkdtemp(), served_model_name="m"))  # no engine, not started

async def health() -> dict:
    transport = httpx.ASGITransport(app=app)  # no lifespan: the engine is never loaded
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        r = await client.get("/health")
        return {"status": r.status_code, "body": r.json()}

probe = asyncio.run(health())
print(json.dumps({"after_import": after_import, "probe": probe,
                  "after_app": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def test_http_layer_imports_and_answers_without_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), json.dumps(HTTP_MODULES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["after_import"] == [], result  # importing the HTTP layer loads neither
    assert result["probe"]["status"] == 503 and result["probe"]["body"]["status"] == "loading"
    assert result["after_app"] == [], result  # nor does building the app and answering /health
