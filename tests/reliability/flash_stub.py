"""A stand-in inference server for the peering tests: answers every GET with a /health body.

``STUB_ATTN=flash``: a server that loaded flash-attn 2, until a ``POST /flip`` turns its /health into a
flash-attn load failure (the signal the operator rolls back on); ``STUB_ATTN=sdpa``: an sdpa server.
Run by devcluster's process kubelet as a pod's container (HOST = the pod IP, PORT from the pod's env);
no model is loaded, so a test decides exactly when the failure appears.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FLASH_OK = {
    "status": "ready",
    "ready": True,
    "attn": "flash_attention_2",
    "attn_requested": "flash_attention_2",
    "flash_attn": {"available": True, "loaded": True, "version": "2.8.3", "error": None},
}
FLASH_FAILED = {
    **FLASH_OK,
    "attn": "sdpa",
    "flash_attn": {
        "available": False,
        "loaded": False,
        "version": None,
        "error": "flash_stub: flash-attn flipped off",
    },
}
SDPA = {
    **FLASH_OK,
    "attn": "sdpa",
    "attn_requested": "sdpa",
    "flash_attn": {"available": False, "loaded": False},
}
STATE = {"body": FLASH_OK if os.environ.get("STUB_ATTN") == "flash" else SDPA}


class Handler(BaseHTTPRequestHandler):
    def _send(self, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(STATE["body"])

    def do_POST(self) -> None:
        if self.path == "/flip" and STATE["body"] is FLASH_OK:
            STATE["body"] = FLASH_FAILED
        self._send(STATE["body"])

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return


if __name__ == "__main__":
    ThreadingHTTPServer(
        (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))), Handler
    ).serve_forever()
