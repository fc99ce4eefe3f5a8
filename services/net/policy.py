"""Which addresses a fetch on a caller's behalf may reach.

Refused (AppError `url_forbidden:<why>`, 400): any address that is loopback, unspecified,
link-local (cloud metadata at 169.254.169.254), private (RFC 1918, CGNAT 100.64/10, IPv6 ULA
fc00::/7 and site-local fec0::/10), multicast, or otherwise not globally routable (reserved,
benchmarking, documentation, 0/8, 240/4), also when wrapped in IPv6 (IPv4-mapped, -compatible,
6to4, NAT64), and the appliance's own loopback ports (ComfyUI, the API) always. A host name is
resolved once and refused when ANY of its addresses is; the caller then connects to exactly the
addresses returned here (services/net/aio.py, services/net/pinned.py), never resolving again.

Two settings open it up, both off by default: `FETCH_ALLOW_HOSTS` (names, addresses or CIDR
networks that skip the address check: an on-prem mirror, a test server) and
`FETCH_ALLOW_PRIVATE=1` (loopback and private ranges allowed; link-local, multicast and
reserved stay refused).
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from services.comfy import backends
from services.net.target import IPAddress, Target, forbidden, literal_address, parse_target

Resolve = Callable[[str, int], list[str]]  # (host, port) -> addresses, the getaddrinfo way
MAX_REDIRECTS = 5  # hops a fetch follows, each one checked again

_PRIVATE = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fec0::/10"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Names of cloud metadata services, refused by name so the answer does not depend on DNS.
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog"})
# What FETCH_ALLOW_PRIVATE opens; everything else stays closed.
_PRIVATE_KINDS = frozenset({"loopback", "private"})
# getaddrinfo's "no such name" (as opposed to a temporary failure, which the caller retries).
_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


def system_resolve(host: str, port: int) -> list[str]:
    """One getaddrinfo; the addresses in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def classify(address: IPAddress) -> str | None:
    """Why an address is forbidden (`loopback`, `private`, ...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        inner = _embedded_v4(address)
        if inner is not None:
            # A wrapper reaches the IPv4 address inside it; the deprecated ::a.b.c.d form is
            # refused even around a public address (no legitimate server uses it).
            return classify(inner) or ("reserved" if int(address) >> 32 == 0 else None)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if any(address in network for network in _PRIVATE if network.version == address.version):
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    value = int(address)
    if value >> 32 == 0 and value > 1:  # IPv4-compatible ::a.b.c.d (:: and ::1 are IPv6's own)
        return ipaddress.IPv4Address(value)
    if address in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class FetchPolicy:
    allow_names: frozenset[str] = frozenset()
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_private: bool = False
    own_ports: frozenset[int] = frozenset()  # loopback ports of the appliance's own services
    resolve: Resolve = field(default=system_resolve, compare=False)

    @classmethod
    def from_settings(cls, settings, resolve: Resolve | None = None) -> "FetchPolicy":
        names, networks = set(), []
        for entry in settings.fetch_allow_hosts:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        # Every ComfyUI backend of a multi-GPU Pod listens on its own port (services/comfy/backends.py).
        own = {b.port for b in backends.plan(settings)} | {settings.comfy_port, settings.api_port}
        if settings.comfy_url:
            try:
                own.add(urlsplit(settings.comfy_url).port or 80)
            except ValueError:
                pass
        return cls(frozenset(names), tuple(networks), settings.fetch_allow_private, frozenset(own),
                   resolve or system_resolve)

    def target(self, url: object) -> Target:
        """Parse `url` and refuse what needs no lookup: scheme, userinfo, an address literal,
        a metadata name. A host name's addresses are checked when it is connected to."""
        target = parse_target(url)
        if target.address is not None:
            self._check(target.host, target.address, target.port)
        else:
            self._check_name(target.host)
        return target

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for host:port: resolved once, every one checked."""
        host = host.strip("[]").rstrip(".").lower()
        literal = literal_address(host)
        if literal is not None:
            self._check(host, literal, port)
            return [str(literal)]
        self._check_name(host)
        try:
            found = self.resolve(host, port)
        except socket.gaierror as exc:
            if exc.errno in _NO_SUCH_NAME:
                raise forbidden("unresolvable", f"{host} does not resolve") from None
            raise  # a temporary DNS failure: the caller's retry applies
        if not found:
            raise forbidden("unresolvable", f"{host} does not resolve")
        for address in found:
            self._check(host, ipaddress.ip_address(address), port)
        return found

    def _check_name(self, host: str) -> None:
        if host in _METADATA_NAMES and host not in self.allow_names:
            raise forbidden("link_local", f"{host} is a cloud metadata service")

    def _check(self, host: str, address: IPAddress, port: int) -> None:
        why = classify(address)
        if why in ("loopback", "unspecified") and port in self.own_ports:
            raise forbidden("own_service", f"{host}:{port} is one of the appliance's own services")
        if why is None or host in self.allow_names or self._allowed_address(address):
            return
        if self.allow_private and why in _PRIVATE_KINDS:
            return
        shown = host if host == str(address) else f"{host} ({address})"
        raise forbidden(why, f"{shown} is not a public address ({why}); fetches on a caller's behalf reach "
                        "only public addresses unless FETCH_ALLOW_HOSTS or FETCH_ALLOW_PRIVATE says otherwise")

    def _allowed_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allow_networks if network.version == address.version)


def parse_allow_hosts(raw: str) -> tuple[str, ...]:
    """`FETCH_ALLOW_HOSTS`: host names, IP addresses or CIDR networks, space or comma separated."""
    entries = tuple(raw.replace(",", " ").lower().split())
    for entry in entries:
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            if literal_address(entry) is not None or not _NAME.fullmatch(entry):
                raise ValueError(f"{entry!r} is not a host name, an IP address or a CIDR network") from None
    return entries
