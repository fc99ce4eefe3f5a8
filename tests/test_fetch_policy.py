"""The fetch policy (services/net) on its own: address classes, URL parsing that every client
reads the same way, the allowlist settings, one lookup per connection, and DNS rebinding."""
from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
import urllib3.util
import yarl
from aiohttp.helpers import is_ip_address

from services.config import Settings, SettingsError
from services.errors import AppError
from services.jobs.fetch import FetchFailed, fetch_bytes
from services.models.sources import Transient
from services.models.transport import HttpSource
from services.net.aio import guarded_session
from services.net.policy import FetchPolicy, classify
from services.net.target import parse_target
from tests.http_server import LocalServer, static
from tests.net_spy import spy
from tests.ssrf_tables import ALL


def why(call) -> str:
    with pytest.raises(AppError) as err:
        call()
    assert err.value.prefix == "url_forbidden", err.value.code
    return err.value.code.split(":", 1)[1]


@pytest.mark.parametrize("address,expected", [
    ("8.8.8.8", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None), ("::ffff:8.8.8.8", None),
    ("2002:808:808::1", None), ("64:ff9b::808:808", None),
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("169.254.169.254", "link_local"), ("fe80::1%1", "link_local"), ("10.1.2.3", "private"),
    ("100.64.0.1", "private"), ("fd00::1", "private"), ("224.0.0.251", "multicast"),
    ("192.0.2.1", "reserved"), ("::8.8.8.8", "reserved"),  # the deprecated IPv4-compatible form
])
def test_address_classes(address, expected):
    assert classify(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize("host,expected", ALL)
def test_every_table_spelling_is_refused_without_a_lookup(host, expected):
    resolver_calls = []
    policy = FetchPolicy(resolve=lambda h, p: resolver_calls.append(h) or ["8.8.8.8"])
    with spy() as net:
        assert why(lambda: policy.target(f"http://{host}:8080/x")) == expected
    assert resolver_calls == [] and net.lookups == [] and net.connects == []


@pytest.mark.parametrize("url,expected", [
    ("http://HOST\\@huggingface.co/x", "userinfo"),
    ("https://huggingface.co@127.0.0.1/", "userinfo"),
    ("https://user:pass@example.com/", "userinfo"),
    ("http:\\\\evil@example.com/", "userinfo"),
    ("http://exa mple.com/", "invalid"),
    ("http://example.com\t.evil/", "invalid"),
    ("http://ex%61mple.com/", "invalid"),
    ("http://example.com\\.evil.com/", "invalid"),
    ("http:///x", "invalid"),
    ("http://[::1/", "invalid"),
    ("http://example.com:99999/", "invalid"),
    ("http://[fe80::1%25eth0]/", "invalid"),
    ("http://08.0.0.1/", "invalid"),        # an address to aiohttp, a name to libc
    ("http://1.2.3.256/", "invalid"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://example.com/", "scheme"),
    ("ftp://example.com/", "scheme"),
])
def test_ambiguous_or_foreign_urls_are_refused(url, expected):
    assert why(lambda: FetchPolicy().target(url)) == expected


@pytest.mark.parametrize("url,host,address", [
    ("http://example.com/a?b=1#frag", "example.com", None),
    ("HTTPS://Example.COM.:8443/x", "example.com", None),
    ("http://bücher.example/x", "xn--bcher-kva.example", None),
    ("http://8.8.8.8/", "8.8.8.8", "8.8.8.8"),
    ("http://134744072/", "8.8.8.8", "8.8.8.8"),
    ("http://0x8.0x8.0x8.0x8/", "8.8.8.8", "8.8.8.8"),
    ("http://[2606:4700:4700::1111]:80/", "2606:4700:4700::1111", "2606:4700:4700::1111"),
    ("http://example.com/x@y", "example.com", None),
    ("http://example.com?q=@evil.com", "example.com", None),
    ("http://example.com#@evil.com", "example.com", None),
    ("http://cafe.bad/", "cafe.bad", None),
])
def test_every_client_reads_the_canonical_url_as_the_policy_did(url, host, address):
    target = FetchPolicy().target(url)
    assert (target.host, str(target.address) if target.address else None) == (host, address)
    assert urllib3.util.parse_url(target.url).host.strip("[]") == host
    assert yarl.URL(target.url).raw_host == host
    # aiohttp connects to what it considers an address without asking any resolver: the policy
    # must then have seen it as an address too (and checked it).
    assert not is_ip_address(target.host) or target.address is not None


def make_policy(**env) -> FetchPolicy:
    return FetchPolicy.from_settings(Settings.from_env(env))


def test_allow_hosts_takes_names_addresses_and_networks():
    policy = make_policy(FETCH_ALLOW_HOSTS="mirror.internal, 10.1.2.3 192.168.0.0/16 [fd00::1]")
    assert policy.allow_names == {"mirror.internal"}
    for url in ("http://10.1.2.3/", "http://192.168.7.7/", "http://[fd00::1]/"):
        assert policy.target(url).address is not None
    assert why(lambda: policy.target("http://10.1.2.4/")) == "private"
    assert why(lambda: policy.target("http://127.0.0.1:9/")) == "loopback"
    policy = FetchPolicy.from_settings(Settings.from_env({"FETCH_ALLOW_HOSTS": "mirror.internal"}),
                                       resolve=lambda h, p: ["10.9.9.9"])
    assert policy.addresses("mirror.internal", 80) == ["10.9.9.9"]  # a named host skips the check
    assert why(lambda: policy.addresses("other.internal", 80)) == "private"


@pytest.mark.parametrize("raw", ["not a host!", "10.0.0.0/33", "a..b", "http://x"])
def test_allow_hosts_refuses_what_it_cannot_read(raw):
    with pytest.raises(SettingsError, match="FETCH_ALLOW_HOSTS"):
        Settings.from_env({"FETCH_ALLOW_HOSTS": raw})


def test_allow_private_opens_loopback_and_private_only():
    policy = make_policy(FETCH_ALLOW_PRIVATE="1")
    for url in ("http://127.0.0.1:9/", "http://10.0.0.1/", "http://100.64.0.1/", "http://[fc00::1]/"):
        policy.target(url)
    assert why(lambda: policy.target("http://169.254.169.254/")) == "link_local"
    assert why(lambda: policy.target("http://metadata.google.internal/")) == "link_local"
    assert why(lambda: policy.target("http://224.0.0.1/")) == "multicast"
    assert why(lambda: policy.target("http://0.0.0.0:9/")) == "unspecified"
    assert why(lambda: policy.target("http://240.0.0.1/")) == "reserved"


def test_the_appliances_own_ports_stay_refused_whatever_is_allowed():
    # An image URL at ComfyUI's /view would read another job's outputs.
    policy = make_policy(FETCH_ALLOW_PRIVATE="1", FETCH_ALLOW_HOSTS="127.0.0.1 localhost",
                         COMFY_PORT="8188", API_PORT="8000", COMFY_URL="http://127.0.0.1:8190")
    for port in (8188, 8000, 8190):
        assert why(lambda: policy.target(f"http://127.0.0.1:{port}/view?filename=x.png")) == "own_service"
        assert why(lambda: policy.target(f"http://2130706433:{port}/view")) == "own_service"
    assert why(lambda: FetchPolicy(allow_names=frozenset({"localhost"}), own_ports=frozenset({8188}),
                                   resolve=lambda h, p: ["127.0.0.1"]).addresses("localhost", 8188)) == "own_service"
    policy.target("http://127.0.0.1:8189/view")


def test_every_comfyui_backend_of_a_multi_gpu_pod_is_an_own_port():
    policy = make_policy(FETCH_ALLOW_PRIVATE="1", FETCH_ALLOW_HOSTS="127.0.0.1", COMFY_PORT="8188", COMFY_GPUS="3")
    for port in (8188, 8189, 8190):
        assert why(lambda: policy.target(f"http://127.0.0.1:{port}/view?filename=x.png")) == "own_service"
    policy.target("http://127.0.0.1:8191/view")


def test_a_name_is_refused_when_any_of_its_addresses_is_forbidden():
    policy = FetchPolicy(resolve=lambda h, p: ["8.8.8.8", "10.0.0.1"])
    assert why(lambda: policy.addresses("mixed.example", 80)) == "private"


def test_unresolvable_names_are_refused_and_temporary_failures_are_not():
    def no_such_name(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def try_again(host, port):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    assert why(lambda: FetchPolicy(resolve=no_such_name).addresses("nx.example", 80)) == "unresolvable"
    assert why(lambda: FetchPolicy(resolve=lambda h, p: []).addresses("empty.example", 80)) == "unresolvable"
    with pytest.raises(socket.gaierror):
        FetchPolicy(resolve=try_again).addresses("flaky.example", 80)


def aio_fetch(policy: FetchPolicy, url: str) -> bytes:
    async def go():
        session = guarded_session(policy)
        try:
            return await fetch_bytes(url, max_bytes=100, timeout=5, session=session)
        finally:
            await session.close()

    return asyncio.run(go())


class Rebinding:
    """DNS rebinding: the first answer is an allowed address, every later one is 127.0.0.1,
    where the secret is served."""

    def __init__(self, first: str):
        self.first = first
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return [self.first] if len(self.calls) == 1 else ["127.0.0.1"]


@pytest.fixture
def secret_server():
    with LocalServer() as server:
        server.route("/secret", static(b"the secret"))
        yield server


def rebinding_policy(first: str = "127.0.0.2") -> tuple[FetchPolicy, Rebinding]:
    # 127.0.0.2 plays the public address the first answer gives: allowed, and nothing listens
    # there, so a connection to it is refused on the spot and never leaves the machine.
    resolver = Rebinding(first)
    return FetchPolicy(allow_networks=(ipaddress.ip_network(first),), resolve=resolver), resolver


def test_requests_connects_to_the_checked_address_and_rebinding_is_caught(secret_server):
    port = secret_server.httpd.server_address[1]
    policy, resolver = rebinding_policy()
    # `localhost` is 127.0.0.1 to the system resolver: a client that looked the name up again
    # for its connection would reach the secret.
    source = HttpSource(f"http://localhost:{port}/secret", {}, 2, policy)
    with spy() as net:
        with pytest.raises(Transient):
            source.open(0)
    assert resolver.calls == ["localhost"]
    assert [c for c in net.connects if c[1] == port] == [("127.0.0.2", port)]
    assert net.lookups.count("localhost") == 0  # the policy's resolver was the only lookup
    # The next connection looks the name up again (once) and is refused on the rebound answer.
    assert why(lambda: source.open(0)) == "loopback"
    assert resolver.calls == ["localhost", "localhost"] and secret_server.hits == []


def test_aiohttp_connects_to_the_checked_address_and_rebinding_is_caught(secret_server):
    port = secret_server.httpd.server_address[1]
    policy, resolver = rebinding_policy()
    with spy() as net:
        with pytest.raises(FetchFailed) as err:
            aio_fetch(policy, f"http://localhost:{port}/secret")
    assert err.value.reason == "unreachable"
    assert resolver.calls == ["localhost"]
    assert [c for c in net.connects if c[1] == port] == [("127.0.0.2", port)]
    assert net.lookups.count("localhost") == 0
    assert why(lambda: aio_fetch(policy, f"http://localhost:{port}/secret")) == "loopback"  # a new session, a new lookup
    assert secret_server.hits == []


def test_allowed_fetches_still_work_through_both_clients(secret_server):
    port = secret_server.httpd.server_address[1]
    policy = FetchPolicy(allow_names=frozenset({"localhost"}))
    assert aio_fetch(policy, f"http://localhost:{port}/secret") == b"the secret"
    body = HttpSource(f"http://localhost:{port}/secret", {}, 2, policy).open(0)
    try:
        assert body.read(100) == b"the secret"
    finally:
        body.close()


def test_a_session_from_elsewhere_is_not_trusted(secret_server, monkeypatch):
    """fetch_bytes given a plain aiohttp session uses its own, under the process's settings."""
    import aiohttp

    port = secret_server.httpd.server_address[1]
    monkeypatch.delenv("FETCH_ALLOW_HOSTS", raising=False)
    monkeypatch.delenv("FETCH_ALLOW_PRIVATE", raising=False)

    async def fetch():
        async with aiohttp.ClientSession() as plain:
            return await fetch_bytes(f"http://localhost:{port}/secret", max_bytes=100, timeout=5, session=plain)

    assert why(lambda: asyncio.run(fetch())) == "loopback"
    assert secret_server.hits == []


def test_parse_target_is_what_the_token_decision_reads():
    # The token decision and the request read the same parsed host: `host` and `url` agree.
    target = parse_target("https://Cdn-LFS.HuggingFace.co./repo?x=1")
    assert target.host == "cdn-lfs.huggingface.co" and target.url == "https://cdn-lfs.huggingface.co/repo?x=1"
