"""A stand-in server for prober tests: answers GET /health with $STUB_STATUS and $STUB_BODY.

Run by the devcluster process kubelet as a pod's container (HOST = the pod IP, PORT from the pod's
env), so the prober can be tested through the API server's pod proxy without loading a model.
"""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/health":
            self.send_error(404)
            return
        body = os.environ.get("STUB_BODY", "{}").encode()
        self.send_response(int(os.environ.get("STUB_STATUS", "200")))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return


if __name__ == "__main__":
    HTTPServer(
        (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))), Handler
    ).serve_forever()
