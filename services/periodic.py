"""A background asyncio task that runs one action every `interval` seconds until stopped.

Used for the Pod API's heartbeats and health refresh: a failing round is logged and the next
one comes as usual, because a locked database or a slow ComfyUI must not end the loop.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from services import logs

log = logs.get("periodic")


class Periodic:
    def __init__(self, name: str, interval: float, action: Callable[[], Awaitable[None]]):
        self.name = name
        self.interval = interval
        self.action = action
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.action()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.error(f"{self.name}_failed", exc_info=True)
            await asyncio.sleep(self.interval)
