"""The kubelet's HTTPS endpoint for ``kubectl logs``: one server per node on <node IP>:10250.

The apiserver reaches a node's kubelet at its InternalIP and ``daemonEndpoints.kubeletEndpoint``;
each devcluster node has its own loopback address, so every node gets its own server.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

log = logging.getLogger("devcluster.kubeletapi")

KUBELET_PORT = 10250


def read_log(data: bytes, tail_lines: int | None, limit_bytes: int | None) -> bytes:
    """Apply ``tailLines`` and ``limitBytes`` as the kubelet does."""
    if tail_lines is not None:
        data = b"".join(data.splitlines(keepends=True)[-tail_lines:]) if tail_lines > 0 else b""
    if limit_bytes is not None:
        data = data[:limit_bytes]
    return data


def make_handler(pods_dir: Path, node: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s %s", node, format % args)

        def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = url.path.strip("/").split("/")
            if parts == ["healthz"]:
                self._send(200, b"ok")
                return
            if len(parts) != 4 or parts[0] != "containerLogs":
                self._send(404, b"not supported by the devcluster kubelet\n")
                return
            _, ns, pod, container = parts
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            previous = q.get("previous") in ("true", "1")
            path = pods_dir / ns / pod / (f"{container}.previous.log" if previous else f"{container}.log")
            if not path.exists():
                what = "previous terminated container" if previous else "container"
                msg = f'{what} "{container}" in pod "{pod}" is waiting to start or not found\n'
                self._send(400, msg.encode())
                return
            tail = int(q["tailLines"]) if "tailLines" in q else None
            limit = int(q["limitBytes"]) if "limitBytes" in q else None
            data = read_log(path.read_bytes(), tail, limit)
            if q.get("follow") not in ("true", "1"):
                self._send(200, data)
                return
            self._follow(path, data)

        def _follow(self, path: Path, first: bytes) -> None:
            """Stream the log until the connection closes or the pod's folder goes away."""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            offset = path.stat().st_size
            chunk = first
            try:
                while True:
                    if chunk:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                    time.sleep(0.5)
                    if not path.exists():
                        break
                    with path.open("rb") as f:
                        size = f.seek(0, 2)
                        if size < offset:  # restarted: a new log
                            offset = 0
                        f.seek(offset)
                        chunk = f.read()
                        offset += len(chunk)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass

    return Handler


class KubeletServer:
    """HTTPS servers on each node's address (serving cert: the cluster's, the apiserver does not verify it)."""

    def __init__(self, pods_dir: Path, node_ips: dict[str, str], cert: Path, key: Path) -> None:
        self.servers: list[ThreadingHTTPServer] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        for node, ip in node_ips.items():
            srv = ThreadingHTTPServer((ip, KUBELET_PORT), make_handler(pods_dir, node))
            srv.daemon_threads = True
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
            self.servers.append(srv)

    def start(self) -> None:
        for srv in self.servers:
            threading.Thread(target=srv.serve_forever, name="kubelet-api", daemon=True).start()

    def stop(self) -> None:
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
