"""aiohttp under the fetch policy: a session whose every connection goes to a checked address.

aiohttp asks its resolver for a host name's addresses once per new connection (then caches
them for ten seconds), and connects to what the resolver answered while TLS and the Host header
keep the name. `PolicyResolver` answers only addresses the policy checked, so there is no second
lookup for DNS rebinding to exploit. An address literal never reaches a resolver in aiohttp: the
caller checks those per request with `FetchPolicy.target` (services/jobs/fetch.py does, on every
redirect hop, since it follows redirects itself).
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from services.net.policy import FetchPolicy


class PolicyResolver(AbstractResolver):
    def __init__(self, policy: FetchPolicy):
        self.policy = policy

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        # getaddrinfo blocks: it runs in a thread, as aiohttp's own ThreadedResolver does.
        addresses = await asyncio.to_thread(self.policy.addresses, host, port)
        return [{"hostname": host, "host": address, "port": port,
                 "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for address in addresses]

    async def close(self) -> None:
        pass


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that resolves through the policy; `policy` says which one."""

    def __init__(self, policy: FetchPolicy, **kwargs: Any):
        super().__init__(resolver=PolicyResolver(policy), **kwargs)
        self.policy = policy


def guarded_session(policy_or_settings) -> aiohttp.ClientSession:
    """A ClientSession for fetches on a caller's behalf (no proxies or netrc from the environment)."""
    policy = policy_or_settings if isinstance(policy_or_settings, FetchPolicy) else \
        FetchPolicy.from_settings(policy_or_settings)
    return aiohttp.ClientSession(connector=GuardedConnector(policy), trust_env=False)


def session_policy(session: aiohttp.ClientSession | None) -> FetchPolicy | None:
    """The policy a session's connections obey, None for a session not made by guarded_session."""
    connector = session.connector if session is not None else None
    return connector.policy if isinstance(connector, GuardedConnector) else None
