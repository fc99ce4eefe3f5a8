"""A URL parsed once into what a fetch needs: scheme, host, port and the request path.

Why one parser: `http://HOST\\@huggingface.co/x` is host `huggingface.co` to urllib's urlsplit
but host `HOST` to requests and browsers (WHATWG ends the authority at `\\`). When the token
decision and the HTTP client parse a URL differently, a token leaks. So a URL is parsed here,
anything whose authority could be read two ways is refused (userinfo, `\\`, `%`, spaces,
control characters), and the request is built from `Target.url`: a canonical spelling that every
parser reads the same way. An IP literal in any spelling libc accepts (`127.1`, `0x7f.1`,
`2130706433`, `[::ffff:127.0.0.1]`) becomes its canonical address, so the address the policy
checks is the one in the URL the client receives.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.errors import AppError

DEFAULT_PORTS = {"http": 80, "https": 443}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# After userinfo is refused, an authority is a host name (letters, digits, `-`, `_`, dots) or a
# bracketed IPv6 literal, then an optional port: nothing another parser could split elsewhere.
_AUTHORITY = re.compile(r"(?:(?P<name>[a-z0-9_.-]{1,253})|\[(?P<v6>[0-9a-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")
_NUMERIC_V4 = re.compile(r"[0-9a-fx.]+")  # what inet_aton may read as an address (127.1, 0x7f.1, 2130706433)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def forbidden(why: str, detail: str) -> AppError:
    return AppError("url_forbidden", detail, suffix=why)


@dataclass(frozen=True)
class Target:
    scheme: str                   # http | https
    host: str                     # lower-case name (IDNA, no trailing dot) or canonical IP address
    port: int
    path: str                     # path and query, as sent; never empty
    address: IPAddress | None     # the host as an address, when the URL names one
    explicit_port: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.explicit_port else ""
        return f"{self.scheme}://{host}{port}{self.path}"


def literal_address(host: str) -> IPAddress | None:
    """The address a host string denotes by itself, read the way libc's resolver reads it."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC_V4.fullmatch(host) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def parse_target(url: object) -> Target:
    """The URL as a Target, or AppError `url_forbidden:<why>` (scheme, userinfo, invalid)."""
    if not isinstance(url, str) or not url:
        raise forbidden("invalid", "the URL must be a non-empty string")
    scheme, _, rest = url.partition(":")
    if scheme.lower() not in DEFAULT_PORTS:
        raise forbidden("scheme", "only http:// and https:// URLs are fetched")
    # The authority as the most generous reader sees it: up to the first `/`, `?` or `#`. An
    # `@` there is userinfo to some parser (`http://HOST\@huggingface.co/` is userinfo to
    # urlsplit, host HOST to requests), so it is refused whoever would have read it which way.
    if "@" in re.split(r"[/?#]", rest.lstrip("/\\"), maxsplit=1)[0]:
        raise forbidden("userinfo", "URLs with a user name or password (user:pass@host) are refused")
    if _UNSAFE.search(url) or "\\" in url.split("?", 1)[0].split("#", 1)[0]:
        # urlsplit silently drops tabs and newlines and keeps `\` inside the authority; other
        # parsers do neither, so such a URL means different hosts to different readers.
        raise forbidden("invalid", "the URL holds spaces, control characters or a backslash")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed `[`
        raise forbidden("invalid", "the URL cannot be parsed") from None
    scheme = parts.scheme.lower()
    netloc = parts.netloc
    try:
        netloc.encode("ascii")
    except UnicodeEncodeError:
        netloc = _idna(netloc)
    match = _AUTHORITY.fullmatch(netloc.lower())
    if not match:
        raise forbidden("invalid", "the URL names no valid host")
    port_text = match["port"]
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise forbidden("invalid", "the URL's port is out of range")
    # The trailing dot goes before the literal test: `127.0.0.1.` must not pass as a name.
    host = match["v6"] or match["name"].rstrip(".")
    address = literal_address(host)
    if address is not None:
        host = str(address)
    elif match["v6"] or not _valid_name(host) or host.replace(".", "").isdigit():
        # Digits and dots that are no address (`08.0.0.1`, `1.2.3.256`): an address to some
        # readers (aiohttp), a name to others (libc). No real name looks like that.
        raise forbidden("invalid", "the URL names no valid host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port, path, address, explicit_port=port_text is not None)


def _valid_name(host: str) -> bool:
    labels = host.split(".")
    return 0 < len(host) <= 253 and all(0 < len(label) <= 63 for label in labels)


def _idna(netloc: str) -> str:
    host, colon, port = netloc.partition(":")  # an international name is never an IPv6 literal
    try:
        return host.encode("idna").decode("ascii") + colon + port
    except UnicodeError:
        raise forbidden("invalid", "the URL's host is not a valid international name") from None


def public_url(url: str) -> str:
    """The URL without credentials, query or fragment: safe for logs, listings and errors."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}"
