"""One webhook delivery attempt, and what its outcome means for the next one.

The URL obeys the fetch policy of every other outbound call (services/net): parsed once, an
address literal checked here, a name's addresses checked and pinned by the guarded session's
resolver at connect time, so a name that turned private since submission is refused now.
Redirects are not followed (the receiver's answer is final). 2xx is delivered; 408, 429, 5xx, a
timeout or a dropped connection is retried with exponential back-off (a `Retry-After` lengthens
the wait); any other status, or a URL the policy refuses, is given up at once: sending the same
request again would meet the same answer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from services import __version__
from services.errors import AppError
from services.net.policy import FetchPolicy
from services.webhooks import signing

MAX_DELAY = 600.0  # no wait between two attempts is longer (a Retry-After included)
_RETRY_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool              # worth another attempt (when attempts are left)
    status: int | None       # the receiver's HTTP status, None when there was none
    error: str | None        # why it did not count as delivered: `http_500`, `timeout`, `url_forbidden:private`
    retry_after: float = 0.0


def backoff(attempt: int, base: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...): base, 2 base, 4 base..."""
    return min(base * 2 ** (attempt - 1), MAX_DELAY)


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value), 0.0), MAX_DELAY) if value else 0.0
    except ValueError:
        return 0.0  # an HTTP date: the back-off applies


async def post(session: aiohttp.ClientSession, policy: FetchPolicy, url: str, msg_id: str, body: bytes,
               key: bytes, timeout: float) -> Outcome:
    """`session` must come from services.net.aio.guarded_session(policy)."""
    try:
        target = policy.target(url)
    except AppError as exc:
        return Outcome(False, False, None, exc.code)
    headers = {"Content-Type": "application/json", "User-Agent": f"comfy-appliance/{__version__}",
               **signing.headers(key, msg_id, int(time.time()), body)}
    try:
        async with session.post(target.url, data=body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await resp.content.readany()  # only the status counts; a large answer is not read
            status = resp.status
            retry_after = _retry_after(resp.headers.get("Retry-After"))
    except AppError as exc:  # the resolver refused the name's addresses
        return Outcome(False, False, None, exc.code)
    except TimeoutError:
        return Outcome(False, True, None, "timeout")
    except aiohttp.ClientError as exc:
        return Outcome(False, True, None, f"unreachable:{type(exc).__name__}")
    if 200 <= status < 300:
        return Outcome(True, False, status, None)
    retry = status in _RETRY_STATUSES or status >= 500
    return Outcome(False, retry, status, f"http_{status}", retry_after if retry else 0.0)
