"""Fetching a small document over http(s) with a size cap and a deadline.

Used for `workflow_url` and for input images given by URL. Failures come back as
`FetchFailed(reason, detail)` so each caller reports them under its own error code; a URL the
fetch policy refuses (services/net: userinfo, a non-public address, also on a redirect) raises
AppError `url_forbidden:<why>`, which every caller reports as it is.

Redirects are followed here, hop by hop, because each hop's URL must pass the policy: aiohttp
connects to an address literal without asking any resolver.
"""
from __future__ import annotations

import asyncio
from urllib.parse import urljoin

import aiohttp

from services.errors import AppError
from services.net.aio import guarded_session, session_policy
from services.net.policy import MAX_REDIRECTS, FetchPolicy
from services.net.target import Target

_REDIRECTS = (301, 302, 303, 307, 308)


class FetchFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason  # invalid_url | <http status> | timeout | too_large | unreachable
        self.detail = detail


async def fetch_bytes(url: str, *, max_bytes: int, timeout: float,
                      session: aiohttp.ClientSession | None = None) -> bytes:
    """`session` should come from services.net.aio.guarded_session (its policy applies). Any
    other session cannot be trusted to connect to the checked address, so it is not used: the
    fetch then runs in a session of its own under the policy of the process's settings."""
    policy = session_policy(session)
    own = policy is None
    if own:
        policy = _process_policy()
    try:
        target = policy.target(url)
    except AppError as exc:
        if exc.code in ("url_forbidden:scheme", "url_forbidden:invalid"):
            raise FetchFailed("invalid_url", exc.detail) from None
        raise
    session = guarded_session(policy) if own else session
    try:
        async with asyncio.timeout(timeout):
            return await _get(session, policy, target, max_bytes)
    except TimeoutError:
        raise FetchFailed("timeout", f"the URL did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise FetchFailed("unreachable", f"the URL could not be fetched: {type(exc).__name__}") from None
    finally:
        if own:
            await session.close()


async def _get(session: aiohttp.ClientSession, policy: FetchPolicy, target: Target, max_bytes: int) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(target.url, allow_redirects=False) as resp:
            location = resp.headers.get("Location")
            if resp.status in _REDIRECTS and location:
                target = policy.target(urljoin(target.url, location))
                continue
            if resp.status >= 400:
                raise FetchFailed(str(resp.status), f"the URL answered HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise _too_large(max_bytes)
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(max_bytes)
            return bytes(body)
    raise FetchFailed("unreachable", f"the URL redirects more than {MAX_REDIRECTS} times")


def _process_policy() -> FetchPolicy:
    from services.config import Settings

    return FetchPolicy.from_settings(Settings.from_env())


def _too_large(max_bytes: int) -> FetchFailed:
    return FetchFailed("too_large", f"the URL returned more than {max_bytes} bytes")
