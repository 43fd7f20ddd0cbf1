"""Where a webhook may go: the guard against server-side request forgery.

A tenant names a URL; camflow's replicas send to it from inside the cluster, so a URL
that reaches the cloud's metadata service, the cluster's own services or camflow
itself would let a tenant use camflow as a proxy. Only public addresses are allowed,
unless the operator allows a network (``webhooks.allowed_networks``).

The decisions here are pure, on addresses already resolved: the sender resolves the
name once, checks every address, and connects to a checked one (never resolving
again), so that a name cannot answer one address to the check and another to the
connection (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from orchestrator.errors import CamflowError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Resolves a host name to its addresses (``socket.getaddrinfo`` in production).
Resolver = Callable[[str, int], list[IPAddress]]

#: IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
MAX_URL_LENGTH = 2048


class TargetRefused(CamflowError):
    """A webhook URL that camflow will not send to; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """A webhook URL, taken apart."""

    url: str
    scheme: str  # http or https
    host: str  # a name, or an address without brackets
    port: int
    #: Path and query, as given ("/" if none).
    path: str


@dataclass(frozen=True)
class Policy:
    """What the operator allows beyond public addresses, and what it forbids besides."""

    allowed: tuple[IPNetwork, ...] = ()
    blocked: tuple[IPNetwork, ...] = ()


def parse(url: str) -> Target:
    """The URL's parts, or TargetRefused naming what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"the URL is {len(url)} characters; the limit is {MAX_URL_LENGTH}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"{url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"{url!r}: a webhook URL starts with https:// (or http://)")
    if not parts.hostname:
        raise TargetRefused(f"{url!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused(
            f"{parts.scheme}://…@{parts.hostname}: a webhook URL holds no user or password; "
            "deliveries are signed, so verify the signature instead"
        )
    if parts.fragment:
        raise TargetRefused(f"{url!r}: a webhook URL has no #fragment")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    default = 443 if parts.scheme == "https" else 80
    return Target(url, parts.scheme, parts.hostname, port or default, path)


def literal_address(host: str) -> IPAddress | None:
    """The address a host is written as, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo, NAT64), if any:
    each would reach that IPv4 address, so it is judged as that address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _kind(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (None if it is)."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (the cloud's metadata service lives there)"
    if address.is_unspecified:
        return "unspecified"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private (a cluster's or office's own network)"
    if not address.is_global:
        return "not a public address (shared or reserved)"
    return None


def refusal(address: IPAddress, policy: Policy) -> str | None:
    """Why a webhook may not go to ``address``, or None if it may."""
    judged = address
    if isinstance(address, ipaddress.IPv6Address):
        judged = _embedded_ipv4(address) or address
    if any(
        a in net for a in {address, judged} for net in policy.allowed if net.version == a.version
    ):
        return None
    for net in policy.blocked:
        if net.version == judged.version and judged in net:
            return f"in {net}, a network webhooks may not reach (webhooks.blocked_networks)"
    kind = _kind(judged)
    if kind is None:
        return None
    shown = judged if judged == address else f"{judged} (as {address})"
    return f"{shown} is {kind}"


def vet(target: Target, addresses: Sequence[IPAddress], policy: Policy) -> IPAddress:
    """The address to connect to: the first of ``addresses`` if every one is allowed (a
    name with one forbidden address is refused whole, as the connection could go
    there). TargetRefused otherwise, naming the address and why."""
    if not addresses:
        raise TargetRefused(f"{target.host} has no address: check the URL's host name")
    for address in addresses:
        reason = refusal(address, policy)
        if reason is not None:
            named = "" if literal_address(target.host) else f"{target.host} resolves to "
            raise TargetRefused(
                f"{target.url}: {named}{reason}; webhooks go to public addresses only. "
                "An operator can allow a network with webhooks.allowed_networks"
            )
    return addresses[0]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a literal address is itself)."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"{host} does not resolve ({exc}): check the URL's host name") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in found:
        # An IPv6 address may come with a %zone; the address is what is judged.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def check(url: str, policy: Policy, resolver: Resolver = resolve) -> tuple[Target, IPAddress]:
    """Parses, resolves and vets ``url``: its parts and the address to connect to."""
    target = parse(url)
    return target, vet(target, resolver(target.host, target.port), policy)
