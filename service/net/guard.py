"""The guard against server-side request forgery: may this server connect to a URL's host?

A URL passes when it is http or https with a host and no credentials, its host resolves,
and every address it resolves to is public (`is_public`), unless the host (`host` or
`host:port`) is on the caller's allowlist. The caller then connects to the address that was
checked (`pinned`), so no second DNS answer can slip in. A malformed URL (a broken IPv6
literal, an empty or over-long label, a bad port) is refused like any other, never raised.

What is public is the standard library's notion (`ipaddress`: is_global, and not multicast,
reserved or site-local), applied to every IPv4 address an IPv6 address carries too: IPv4-
mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::a.b.c.d), 6to4 (2002:aabb:ccdd::, `sixtofour`) and
Teredo (`teredo`, both ends). The deprecated IPv4-compatible (::a.b.c.d) and IPv4-translated
(::ffff:0:a.b.c.d) forms and local-use NAT64 (64:ff9b:1::/48) sit in the reserved ::/8 and
are refused whatever they carry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The well-known NAT64 prefix (RFC 6052): the IPv4 address is the low 32 bits. The standard
# library names no property for it, so it is the one prefix written here.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UrlRefused(Exception):
    """A URL the guard does not let this server fetch from or post to."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason  # INVALID_IMAGE_URL (malformed) or IMAGE_URL_FORBIDDEN


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses that traffic to `address` would reach or reveal."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def is_public(address: IPAddress) -> bool:
    """Whether this server may connect to `address` without an allowlist entry."""
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not (address.is_multicast or address.is_reserved)
    carried = embedded_ipv4(address)
    if address.ipv4_mapped is not None or address in NAT64:
        # The IPv6 form is only a way of writing the IPv4 address: that one decides.
        return all(is_public(v4) for v4 in carried)
    if not address.is_global or address.is_multicast or address.is_reserved \
            or address.is_site_local:
        return False
    return all(is_public(v4) for v4 in carried)


async def checked_address(url: str, allowed_hosts: frozenset[str]) -> str:
    """The address to connect to for `url`: its host resolved, and refused (UrlRefused) if
    any address is not public, unless the host (`host` or `host:port`) is allowed. Callers
    connect to this address (see `pinned`), so no second DNS answer can slip in."""
    host, port = _host_and_port(url)
    allowed = {host, f"{host}:{port}"} & allowed_hosts
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        # OSError: no such host; UnicodeError: an empty or over-long label (idna);
        # ValueError: a NUL or similar in the name.
        raise UrlRefused(f"the host of {shown(url)} does not resolve",
                         "INVALID_IMAGE_URL") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise UrlRefused(f"the host of {shown(url)} does not resolve", "INVALID_IMAGE_URL")
    if not allowed and any(not is_public(a) for a in addresses):
        raise UrlRefused(f"{shown(url)} points at an address this server may not reach "
                         "(loopback, private, link-local or metadata)", "IMAGE_URL_FORBIDDEN")
    return str(addresses[0])


def _host_and_port(url: str) -> tuple[str, int]:
    """The lower-case host and the port of an http(s) URL, or UrlRefused."""
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError:  # a broken IPv6 literal (`http://[::1/x`), a port out of range
        raise UrlRefused(f"{shown(url)} is not a valid URL", "INVALID_IMAGE_URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise UrlRefused("URLs must be http or https with a host", "INVALID_IMAGE_URL")
    if parts.username or parts.password:
        raise UrlRefused("URLs must not carry credentials", "INVALID_IMAGE_URL")
    return hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """`url` aimed at the checked `address`: the URL to request, its Host header, and the
    TLS server name (httpx's `sni_hostname` extension)."""
    parts = urlsplit(url)
    netloc = f"[{address}]" if ":" in address else address
    if parts.port:
        netloc += f":{parts.port}"
    return (parts._replace(netloc=netloc).geturl(),
            {"Host": parts.netloc.rsplit("@", 1)[-1]}, {"sni_hostname": parts.hostname or ""})


def shown(url: str) -> str:
    """A URL as it may appear in an error message: no query string, bounded length."""
    try:
        parts = urlsplit(url)
        text = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
    except ValueError:
        text = url.split("?", 1)[0]
    text = text.replace("\x00", "")
    return text if len(text) <= 120 else text[:117] + "..."
