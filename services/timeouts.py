"""Waiting with a deadline without losing cancellations.

`asyncio.wait_for` on Python 3.11 can swallow a cancellation that arrives just as the awaited
thing completes (CPython gh-86296). In the job wait loop that lost a DELETE /jobs or RunPod
cancel under load: the job kept running in ComfyUI. `asyncio.timeout` does not have that race.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def at_most(seconds: float, awaitable: Awaitable[T]) -> T | None:
    """The awaitable's result, or None when `seconds` pass first."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        return None
