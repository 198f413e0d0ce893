"""Which IP addresses an outbound connection must not reach: the one rule shared by the
website fetches of agents (through ``runner.api``) and the engine's webhook deliveries.

``is_global`` alone is not enough: multicast, site-local and some reserved ranges count
as global to the ``ipaddress`` module, and an IPv6 address may carry an IPv4 one (NAT64,
6to4, IPv4-mapped, -compatible or -translated, Teredo), which decides instead.

:func:`checked_addresses` resolves a host once and checks every address it got; the
caller then connects to one of exactly those (no second lookup that DNS rebinding could
answer differently).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal

__all__ = [
    "AddressProblem", "IPAddress", "Resolver", "checked_addresses", "non_public_reason",
    "resolve_host",
]

#: ``resolve(host, port)`` -> the host's addresses, in the order to try them.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Ranges whose addresses carry an IPv4 address. The first group reaches that IPv4
# address through a translator or relay, so it is as public as the IPv4 address is; the
# second never names a web server in a DNS answer and is refused whatever it carries.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215 local use
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")  # RFC 3056
_TEREDO: Final = ipaddress.IPv6Network("2001::/32")  # RFC 4380
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated
_IPV4_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """(form, the IPv4 address it carries) for a NAT64, local-use NAT64 or 6to4 address."""
    packed = address.packed
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(packed[12:])
    if address in _NAT64_LOCAL:
        # RFC 6052 with a /48 prefix: the IPv4 address is bits 48-63 and 72-87 (the
        # "u" octet, bits 64-71, is skipped).
        return "local-use NAT64", ipaddress.IPv4Address(packed[6:8] + packed[9:11])
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


def _tunnelled_ipv4(address: ipaddress.IPv6Address) -> tuple[str, str] | None:
    """(form, what it carries) for the IPv6 forms refused whatever they carry."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", str(address.ipv4_mapped)
    if address in _IPV4_TRANSLATED:
        return "IPv4-translated", str(ipaddress.IPv4Address(address.packed[12:]))
    if address.teredo is not None:
        server, client = address.teredo
        return "Teredo", f"server {server}, client {client}"
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # not :: or ::1
        return "IPv4-compatible", str(ipaddress.IPv4Address(address.packed[12:]))
    return None


def _plain_reason(address: IPAddress) -> str | None:
    # ``is_global`` alone is not enough: multicast, site-local and some reserved
    # ranges count as global to the ipaddress module.
    for reason, hit in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("not globally routable", not address.is_global),
    ):
        if hit:
            return reason
    return None


def non_public_reason(address: IPAddress) -> str | None:
    """Why an outbound connection must not go to ``address``, or None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        tunnelled = _tunnelled_ipv4(address)
        if tunnelled is not None:
            form, carried = tunnelled
            return f"{form} address carrying {carried}"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            form, ipv4 = embedded
            inner = _plain_reason(ipv4)
            # The embedded address decides: these prefixes themselves are not global.
            return None if inner is None else f"{form} address of {inner} {ipv4}"
    return _plain_reason(address)


async def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver's addresses for ``host``, in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressProblem(Exception):
    """Why :func:`checked_addresses` gave no address to connect to."""

    def __init__(
        self, kind: Literal["unresolvable", "bad_answer", "non_public"], message: str
    ) -> None:
        super().__init__(message)
        self.kind = kind


async def checked_addresses(
    host: str, port: int, *, allow_private: bool, resolve: Resolver = resolve_host,
    shown: str | None = None,
) -> list[str]:
    """The addresses to connect to for ``host`` (an address itself, or a name resolved
    once), each checked with :func:`non_public_reason` unless ``allow_private``. Raises
    :class:`AddressProblem`; its message names the host as ``shown`` (default: ``host``)."""
    name = repr(host if shown is None else shown)
    texts: Sequence[str] = [host]
    if not _is_address(host):
        try:
            texts = await resolve(host, port)
        except OSError as exc:
            raise AddressProblem("unresolvable", f"cannot resolve {name}: {exc}") from None
        if not texts:
            raise AddressProblem("unresolvable", f"{name} resolves to no address")
    parsed = []
    for text in texts:
        try:
            parsed.append(ipaddress.ip_address(text))
        except ValueError:
            raise AddressProblem(
                "bad_answer", f"bad resolver answer for {name}: {text!r}") from None
    if not allow_private:
        refused = [f"{address}: {reason}" for address in parsed
                   if (reason := non_public_reason(address)) is not None]
        if refused:
            raise AddressProblem(
                "non_public",
                f"{name} resolves to a non-public address ({'; '.join(refused)})")
    return [str(address) for address in parsed]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
