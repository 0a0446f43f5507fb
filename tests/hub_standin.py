"""A stand-in for the Hugging Face Hub: serves local model folders over the Hub's download protocol.

huggingface_hub, pointed at it with HF_ENDPOINT, downloads from it as from the Hub: for
`snapshot_download` the model info API (`GET /api/models/<repo>/revision/<rev>`: `sha`,
`siblings`), the tree API (`GET /api/models/<repo>/tree/<commit>`: path, size, oid) and, per file,
`HEAD` + `GET /<repo>/resolve/<rev>/<file>` with the headers it checks (`X-Repo-Commit`, `ETag`
and `X-Linked-Etag`, `Content-Length`, `X-Linked-Size`). No xet headers, so plain HTTP downloads.

A repository is a folder `<root>/<org>/<name>/`; its commit is a hash of its files. Every request
is counted (`counts`, also at `GET /_stats`); `throttle_bps` limits each file body's rate.
Run as a process: `python -m tests.hub_standin ROOT [--port N] [--throttle-mbps M]` prints its URL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

CHUNK = 1 << 20


def _files(repo: Path) -> list[Path]:
    return sorted(p for p in repo.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


class HubStandIn:
    """The server (a thread); `url` for HF_ENDPOINT, `counts` of requests by kind."""

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = 0, throttle_bps: int | None = None
    ) -> None:
        self.root = root
        self.throttle_bps = throttle_bps
        self.counts: Counter[str] = Counter()
        self.downloads: Counter[str] = Counter()  # GET resolve, per "<repo>/<file>"
        self._lock = threading.Lock()
        self._etags: dict[Path, tuple[float, str]] = {}
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def count(self, kind: str, key: str | None = None) -> None:
        with self._lock:
            self.counts[kind] += 1
            if key is not None:
                self.downloads[key] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"counts": dict(self.counts), "downloads": dict(self.downloads)}

    def etag(self, path: Path) -> str:
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._etags.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        tag = _sha256(path)
        with self._lock:
            self._etags[path] = (mtime, tag)
        return tag

    def commit(self, repo: Path) -> str:
        h = hashlib.sha1()
        for f in _files(repo):
            h.update(f"{f.relative_to(repo)}\0{self.etag(f)}\n".encode())
        return h.hexdigest()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, body: Any, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _missing(self, what: str) -> None:
                data = json.dumps({"error": what}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Error-Code", "EntryNotFound" if "file" in what else "RepoNotFound")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._route()

            def do_GET(self) -> None:
                self._route()

            def _route(self) -> None:
                parts = [unquote(p) for p in urlparse(self.path).path.split("/") if p]
                if parts == ["_stats"]:
                    return self._json(hub.stats())
                if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] in ("revision", "tree"):
                    repo = hub.root / parts[2] / parts[3]
                    if not repo.is_dir():
                        return self._missing(f"repo {parts[2]}/{parts[3]}")
                    hub.count(f"api-{parts[4]}")
                    return self._info(repo, f"{parts[2]}/{parts[3]}", parts[4])
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = hub.root / parts[0] / parts[1]
                    file = repo.joinpath(*parts[4:])
                    if not repo.is_dir() or not file.is_file():
                        return self._missing(f"file {'/'.join(parts)}")
                    return self._file(repo, file, f"{parts[0]}/{parts[1]}/{'/'.join(parts[4:])}")
                return self._missing(f"path {self.path}")

            def _info(self, repo: Path, repo_id: str, kind: str) -> None:
                files = _files(repo)
                if kind == "tree":
                    return self._json(
                        [
                            {"type": "file", "oid": hub.etag(f)[:40], "size": f.stat().st_size,
                             "path": str(f.relative_to(repo))}
                            for f in files
                        ]
                    )  # fmt: skip
                return self._json(
                    {
                        "_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": hub.commit(repo),
                        "private": False, "disabled": False, "gated": False, "tags": [],
                        "siblings": [{"rfilename": str(f.relative_to(repo))} for f in files],
                    }
                )  # fmt: skip

            def _file(self, repo: Path, file: Path, key: str) -> None:
                size = file.stat().st_size
                etag = hub.etag(file)
                hub.count(
                    "resolve-head" if self.command == "HEAD" else "resolve-get",
                    key if self.command == "GET" else None,
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.send_header("X-Linked-Size", str(size))
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Repo-Commit", hub.commit(repo))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.command == "HEAD":
                    return
                started = time.monotonic()
                sent = 0
                with file.open("rb") as f:
                    while block := f.read(CHUNK):
                        self.wfile.write(block)
                        sent += len(block)
                        if hub.throttle_bps:
                            ahead = sent / hub.throttle_bps - (time.monotonic() - started)
                            if ahead > 0:
                                time.sleep(ahead)

        return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument(
        "--throttle-mbps", type=float, default=None, help="MB/s per file body (default: unthrottled)"
    )
    a = p.parse_args()
    bps = int(a.throttle_mbps * 1e6) if a.throttle_mbps else None
    hub = HubStandIn(a.root, a.host, a.port, bps).start()
    print(hub.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
