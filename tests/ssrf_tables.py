"""The attack tables: spellings of forbidden hosts, and the why the fetch policy must answer.

Shared by tests/test_ssrf_attacks.py (in process and through the Pod) and tests/netns_probe.py
(inside an empty network namespace). A host is written as it goes into a URL's authority.
"""
from __future__ import annotations

# Loopback and "this host" in every spelling libc or a URL parser accepts: dotted, short
# (127.1), decimal, hex, octal, mixed, trailing dot, and IPv6 (plain, IPv4-mapped, -compatible,
# NAT64, 6to4).
LOOPBACK = [
    ("127.0.0.1", "loopback"), ("127.1", "loopback"), ("127.0.1", "loopback"), ("2130706433", "loopback"),
    ("0x7f000001", "loopback"), ("0x7f.1", "loopback"), ("0x7f.0x0.0x0.0x1", "loopback"),
    ("0177.0.0.1", "loopback"), ("017700000001", "loopback"), ("127.0.0.1.", "loopback"),
    ("127.255.255.254", "loopback"), ("[::1]", "loopback"), ("[0:0:0:0:0:0:0:1]", "loopback"),
    ("[::ffff:127.0.0.1]", "loopback"), ("[::ffff:7f00:1]", "loopback"), ("[::127.0.0.1]", "loopback"),
    ("[64:ff9b::127.0.0.1]", "loopback"), ("[2002:7f00:1::]", "loopback"),
    ("0.0.0.0", "unspecified"), ("0", "unspecified"), ("[::]", "unspecified"), ("[::ffff:0.0.0.0]", "unspecified"),
]

# Everything else that is not the public internet: cloud metadata (link-local, by address and by
# name), RFC 1918, CGNAT, ULA, multicast, reserved, benchmarking and documentation ranges.
NON_LOOPBACK = [
    ("169.254.169.254", "link_local"), ("2852039166", "link_local"), ("0xa9fea9fe", "link_local"),
    ("[::ffff:169.254.169.254]", "link_local"), ("[fe80::1]", "link_local"),
    ("metadata.google.internal", "link_local"), ("metadata.goog", "link_local"),
    ("10.0.0.1", "private"), ("012.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.0.1", "private"), ("100.64.0.1", "private"), ("100.127.255.254", "private"),
    ("[fc00::1]", "private"), ("[fd00:ec2::254]", "private"), ("[fec0::1]", "private"),
    ("[::ffff:10.0.0.1]", "private"), ("[64:ff9b::a00:1]", "private"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("[ff02::1]", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("198.18.0.1", "reserved"),
    ("192.0.2.1", "reserved"), ("198.51.100.1", "reserved"), ("203.0.113.1", "reserved"),
    ("[2001:db8::1]", "reserved"), ("0.1.2.3", "reserved"), ("[100::1]", "reserved"),
]

ALL = LOOPBACK + NON_LOOPBACK

# Hosts given as names, whose forbidden addresses only a lookup reveals (a fake resolver plays
# DNS in process; in the Pod only `localhost` resolves without one).
NAMES = {"localhost": "loopback", "LocalHost.": "loopback"}


def url(host: str, port: int, path: str = "/leak.safetensors") -> str:
    return f"http://{host}:{port}{path}"


def address_of(host: str) -> str:
    """What a fake resolver answers for a host of the tables: its address, as getaddrinfo gives it."""
    import ipaddress
    import socket

    bare = host.strip("[]").rstrip(".")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return socket.inet_ntoa(socket.inet_aton(bare))
