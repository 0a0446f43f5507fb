"""A health-only stand-in of the inference server: answers ``/health``, ``/live`` and ``/metrics`` as a
GPU pod would, with bodies the server's own code built.

It stands in for what cannot run here: a server on a GPU where flash-attn loads (on this machine's
CPUs the real server never runs on flash), and 400 servers at once (``bench/operator_scale.py``:
one real server per pod does not fit the machine). It loads nothing: the standard library only, a
few MB per process.

The bodies are not written by hand: :func:`write_bodies` (run once, in a process that can import the
server) renders them with ``omega_server.health.health_body`` through ``tests.contracts.server_bodies``
into a JSON file; the stand-in serves from that file. Which body, from the container's environment:

* ``ATTN_IMPL`` (the operator sets it): ``sdpa`` gives a server ready on sdpa; a flash request
  (``auto``, ``flash_attention_2``) gives a server ready on flash-attn 2, unless
* ``OMEGA_STANDIN_FLASH=broken`` (devcluster's kubelet sets it for pods on a node whose flash is
  broken): flash-attn failed to load (an ``import_error``) and the server serves sdpa in process,
  as the real server does.
* ``OMEGA_STANDIN_LOAD_SECONDS``: answer ``loading`` (503) that long first, like a model load.

``POST /_crash`` ends the process as a crash would (``Segmentation fault`` on stderr, exit code 139):
how a test restarts a pod that serves (a liveness kill, an Xid, a node reboot).

Run as ``python tests/health_standin.py BODIES_JSON`` (listens on ``HOST``:``PORT``, like the server).
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FLASH_REQUESTS = ("auto", "flash_attention_2")
BROKEN_ENV = "OMEGA_STANDIN_FLASH"
LOAD_ENV = "OMEGA_STANDIN_LOAD_SECONDS"
SCRIPT = Path(__file__).resolve()
#: what a node whose driver does not match the flash-attn build shows (a mixed-driver node pool)
NODE_FLASH_ERROR = (
    "ImportError: flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so: undefined symbol: "
    "cuLaunchKernelEx (the node's CUDA driver is older than the flash-attn build)"
)


def body_key(attn_impl: str, flash_broken: bool) -> str:
    """The key of the body a stand-in with this environment serves once loaded."""
    if attn_impl not in FLASH_REQUESTS:
        return "sdpa/ready"
    return f"{attn_impl}/{'flash-failed' if flash_broken else 'on-flash'}"


def write_bodies(path: Path) -> Path:
    """Render every body the stand-in may serve with the server's own code into ``path`` (JSON)."""
    from tests.contracts import server_bodies as sb

    bodies: dict[str, Any] = {
        "sdpa/ready": sb.body("ready", sb.engine_info(requested="sdpa", flash_error=None), attn_impl="sdpa")
    }
    for requested in FLASH_REQUESTS:
        bodies[f"{requested}/on-flash"] = sb.body(
            "ready", sb.engine_info(attn="flash_attention_2", requested=requested), attn_impl=requested
        )
        broken = sb.engine_info(requested=requested, flash_error=NODE_FLASH_ERROR, flash_kind="import_error")
        bodies[f"{requested}/flash-failed"] = sb.body("ready", broken, attn_impl=requested)
    for requested in (*FLASH_REQUESTS, "sdpa"):
        bodies[f"{requested}/loading"] = sb.body("loading", attn_impl=requested)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bodies))
    return path


def command(python: str, bodies: Path) -> list[str]:
    """The command line a devcluster image runs for the stand-in (``Cluster.add_image``)."""
    return [python, str(SCRIPT), str(bodies)]


class _Handler(BaseHTTPRequestHandler):
    server: _StandIn

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            body = self.server.health()
            self._send(200 if body.get("ready") else 503, json.dumps(body).encode(), "application/json")
        elif path == "/live":
            self._send(200, b'{"status":"alive"}', "application/json")
        elif path == "/metrics":
            text = f'omega_server_info{{version="{self.server.version}",standin="health"}} 1\n'
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        else:
            self._send(
                404,
                b'{"error":{"message":"health stand-in: no such route","type":"not_found"}}',
                "application/json",
            )

    def do_POST(self) -> None:
        if self.path == "/_crash":
            print("Segmentation fault (core dumped)", file=sys.stderr, flush=True)
            os._exit(139)
        self._send(
            404,
            b'{"error":{"message":"health stand-in: no such route","type":"not_found"}}',
            "application/json",
        )

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: 400 of these share a machine
        return


class _StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], bodies: dict[str, Any], env: dict[str, str]) -> None:
        super().__init__(address, _Handler)
        attn = env.get("ATTN_IMPL", "auto")
        self.ready_body = bodies[body_key(attn, env.get(BROKEN_ENV) == "broken")]
        self.loading_body = bodies[f"{attn if attn in FLASH_REQUESTS else 'sdpa'}/loading"]
        self.ready_at = time.monotonic() + float(env.get(LOAD_ENV) or 0)
        self.version = str(self.ready_body.get("version"))

    def health(self) -> dict[str, Any]:
        return self.ready_body if time.monotonic() >= self.ready_at else self.loading_body


def main(argv: list[str]) -> None:
    bodies = json.loads(Path(argv[0]).read_text())
    env = dict(os.environ)
    server = _StandIn((env.get("HOST", "127.0.0.1"), int(env.get("PORT", "8000"))), bodies, env)
    print(
        f"health stand-in on {server.server_address}: {body_key(env.get('ATTN_IMPL', 'auto'), env.get(BROKEN_ENV) == 'broken')}",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
