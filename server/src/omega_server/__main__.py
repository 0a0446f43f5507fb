"""`python -m omega_server` / `omega-vlm-server`: validate the environment, listen, load, serve.

`omega-vlm-server download` runs the model download (omega_server.download) instead.

Fatal start-up errors (bad environment, port in use, model load failure) print one `fatal: ...`
line on stderr and exit non-zero, so a crash-looping pod says why in its termination message.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys

from omega_server.listen import listen_socket
from omega_server.settings import SettingsError, load_settings

EXIT_CONFIG = 2
EXIT_FATAL = 1


def _fatal(line: str) -> None:
    print(line if line.startswith("fatal:") else f"fatal: {line}", file=sys.stderr, flush=True)


class _QuietProbes(logging.Filter):
    """Keep kubelet/Prometheus probes (/health, /live, /metrics) out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        path = args[2] if isinstance(args, tuple) and len(args) >= 3 else ""
        return path not in ("/health", "/live", "/metrics")


def _listen(host: str, port: int) -> socket.socket:
    sock = listen_socket(host, port)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit status.

    `omega-vlm-server download` instead fetches an hf:// MODEL_PATH into HF_HOME and exits (the
    model-download init container: omega_server.download).
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["download"]:
        from omega_server import download

        return download.main(args[1:])
    try:
        settings = load_settings()
    except SettingsError as exc:
        _fatal(str(exc))
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        sock = _listen(settings.host, settings.port)
    except OSError as exc:
        _fatal(f"cannot listen on HOST={settings.host} PORT={settings.port}: {exc.strerror or exc}")
        return EXIT_FATAL

    import uvicorn

    from omega_server.app import create_app

    failure: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(line: str) -> None:
        failure.append(line)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        timeout_keep_alive=settings.http_keep_alive_seconds,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.access").addFilter(_QuietProbes())
    host, port = sock.getsockname()[:2]
    logging.getLogger("omega_server").info("listening on %s:%s, loading %s", host, port, settings.model_path)
    # uvicorn re-raises the stop signal once it has shut down; with this handler in place the re-raised
    # SIGTERM ends `main` normally, so a graceful stop exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: server.handle_exit(signum, frame) if server else None)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if failure:
        _fatal(failure[0])
        return EXIT_FATAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
