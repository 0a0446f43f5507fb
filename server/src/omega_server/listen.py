"""The server's listening socket."""

from __future__ import annotations

import socket


def listen_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket whose accepted connections get TCP_NODELAY.

    asyncio (and so uvicorn) turns Nagle's algorithm off only on sockets whose ``proto`` is
    IPPROTO_TCP, and an accepted socket inherits the listener's; ``socket.socket(AF_INET, SOCK_STREAM)``
    has proto 0. With Nagle on, the server's small writes (headers, then SSE chunks) wait for the
    client's delayed ACK on a kept-alive connection: about 40 ms on Linux, before the first token's
    chunk among others.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock
