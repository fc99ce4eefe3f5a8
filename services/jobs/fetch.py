"""Fetching a small document over http(s) with a size cap and a deadline.

Used for `workflow_url` and for input images given by URL. Failures come back as
`FetchFailed(reason, detail)` so each caller reports them under its own error code.
"""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp


class FetchFailed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason  # invalid_url | <http status> | timeout | too_large | unreachable
        self.detail = detail


async def fetch_bytes(url: str, *, max_bytes: int, timeout: float,
                      session: aiohttp.ClientSession | None = None) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FetchFailed("invalid_url", "the URL must be http:// or https://")
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, allow_redirects=True, max_redirects=5) as resp:
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
    except TimeoutError:
        raise FetchFailed("timeout", f"the URL did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise FetchFailed("unreachable", f"the URL could not be fetched: {type(exc).__name__}") from None
    finally:
        if own:
            await session.close()


def _too_large(max_bytes: int) -> FetchFailed:
    return FetchFailed("too_large", f"the URL returned more than {max_bytes} bytes")
