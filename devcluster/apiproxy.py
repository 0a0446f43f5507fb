"""The ``kubernetes`` Service of a devcluster: ``<prefix>.255.1:443`` forwarded to the apiserver.

Pods' /etc/hosts map ``kubernetes.default.svc`` (and its shorter names) to this address, so clients
that use the in-cluster URL (kopf's ``login_with_service_account``: ``https://kubernetes.default.svc``)
reach the apiserver, whose serving certificate names it. One address per cluster (its pod range).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

log = logging.getLogger("devcluster.apiproxy")

SERVICE_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def service_address(prefix: str) -> str:
    """The kubernetes Service's address in the pod range ``127.<a>`` (pods use .1-.250, nodes .0)."""
    return f"{prefix}.255.1"


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class ApiProxy:
    """A TCP forwarder from ``listen`` to the apiserver at ``target``."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(64)

    def start(self) -> None:
        threading.Thread(target=self._accept, name="apiproxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError as e:
            log.warning("apiserver unreachable: %s", e)
            client.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
