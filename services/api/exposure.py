"""Who may reach the Pod API: closed by default.

A Pod's API port is published on the internet (RunPod's proxy), and on a laptop any web page
can send requests to 127.0.0.1. So:

- binding anything but loopback without API_TOKEN refuses to start, unless the operator says
  so with ALLOW_UNAUTHENTICATED=1 (`check_bind`);
- the Host header must name this server: loopback names, the bound address, API_ALLOWED_HOSTS
  (`*.proxy.runpod.net` in the image) and the Pod's own proxy name from RUNPOD_POD_ID
  (`HostPolicy`). A DNS-rebinding page reaches 127.0.0.1 under *its own* host name, which is
  refused before any route runs.
"""
from __future__ import annotations

import ipaddress
import re

from services.config import SettingsError

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
RUNPOD_PROXY_SUFFIX = "proxy.runpod.net"
# A host name or IP literal as it may appear in a Host header, port already split off.
_HOST_RE = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (or "0.0.0.0"'s cousins) may resolve anywhere


def check_bind(settings) -> None:
    """Raise SettingsError when the API would serve a non-loopback address without a token."""
    if settings.api_token or settings.allow_unauthenticated or is_loopback(settings.api_host):
        return
    raise SettingsError(f"API_HOST={settings.api_host} is not a loopback address and API_TOKEN is empty: "
                        "set API_TOKEN, or ALLOW_UNAUTHENTICATED=1 to serve without authentication")


def details_public(settings) -> bool:
    """Whether /healthz's details (paths, pids, programs) go to callers without a token: only
    when no token is configured and nothing but this machine can connect."""
    return not settings.api_token and is_loopback(settings.api_host)


def split_host(header: str | None) -> str | None:
    """The host part of a Host header, lower-cased, without port or trailing dot; None when the
    header is missing or malformed (a comma means two Host headers were sent)."""
    if not header:
        return None
    host, port = header.strip(), ""
    if host.startswith("["):
        end = host.find("]")
        host, port = host[:end + 1], host[end + 1:]
    elif host.count(":") == 1:
        host, port = host.split(":")
        port = ":" + port
    if port and not re.fullmatch(r":[0-9]{1,5}", port):
        return None
    if not _HOST_RE.fullmatch(host):
        return None
    host = host.lower()
    return host[:-1] if host.endswith(".") and not host.startswith("[") else host


def _unspecified(host: str) -> bool:
    """0.0.0.0, :: or empty: every interface, which names no host."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host.strip() == ""


def _as_host_header(name: str) -> str:
    """How a configured name appears in a Host header: lower case, IPv6 in brackets."""
    name = name.strip().lower().strip("[]")
    return f"[{name}]" if ":" in name else name.rstrip(".")


class HostPolicy:
    def __init__(self, settings):
        patterns = {_as_host_header(name) for name in (*settings.api_allowed_hosts, *LOOPBACK_NAMES)}
        if not _unspecified(settings.api_host):  # a specific bound address names this server too
            patterns.add(_as_host_header(settings.api_host))
        if settings.runpod_pod_id:
            patterns.add(f"{settings.runpod_pod_id.lower()}-{settings.api_port}.{RUNPOD_PROXY_SUFFIX}")
        self.any = "*" in patterns
        self.exact = {p for p in patterns if not p.startswith("*")}
        self.suffixes = tuple(p[1:] for p in patterns if p.startswith("*."))  # "*.a.b" -> ".a.b"

    def allows(self, host: str) -> bool:
        if self.any or host in self.exact:
            return True
        # "*.proxy.runpod.net" matches "<pod>-8000.proxy.runpod.net", never "proxy.runpod.net"
        # itself nor "evilproxy.runpod.net".
        return any(host.endswith(suffix) and len(host) > len(suffix) for suffix in self.suffixes)
