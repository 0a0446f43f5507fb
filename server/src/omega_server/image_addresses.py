"""Where an image URL may be fetched from: only public addresses (the SSRF guard of image fetches).

``refused_address`` says why an address is not public; ``check_addresses`` refuses (400,
``invalid_image_url``) a host that resolves to any such address; ``resolve`` lists a host's addresses.
Used by :class:`omega_server.images.ImageFetcher`, which connects to an address it checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable

from omega_server.errors import APIError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refused_address(address: str | IPAddress) -> str | None:
    """Why an image fetch must not go to `address` ("loopback", "private", ...), or None if public.

    Refused: unspecified, loopback, link-local, multicast, reserved, private (RFC 1918, ULA,
    site-local) and every other address that is not globally reachable (shared 100.64/10,
    documentation and benchmark ranges). An IPv6 address that carries an IPv4 one (mapped, 6to4,
    NAT64) is judged by the IPv4 address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return refused_address(embedded)
        if ip.is_site_local:
            return "private"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


def check_addresses(
    host: str,
    addresses: Iterable[str],
    param: str,
    refuse: Callable[[str], str | None] = refused_address,
) -> None:
    """Refuse (400, `invalid_image_url`) when any address that `host` resolves to is not public."""
    for address in addresses:
        kind = refuse(address)
        if kind is not None:
            raise APIError(
                400,
                f"Image URL host {host!r} resolves to a {kind} address ({address}); this server only "
                "fetches images from public addresses (ALLOW_PRIVATE_IMAGE_URLS).",
                param=param,
                code="invalid_image_url",
            )


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (TCP), in the resolver's order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
