"""Back-off for transient download failures: dropped or silent connections, 429 and 5xx.

Failures are counted since the last byte that arrived (like huggingface_hub's resume loop): a
14 GB download over a flaky link may drop a hundred times and still finish, while a source that
never answers gives up after `DOWNLOAD_RETRIES` attempts with `download_failed:<last reason>`.
"""
from __future__ import annotations

import random
from typing import Callable, TypeVar

from services.errors import AppError
from services.models.sources import Transient

MAX_SLEEP = 60.0
T = TypeVar("T")


class Backoff:
    def __init__(self, retries: int, base_sleep: float, sleep: Callable[[float], None], public: str):
        self.retries = retries
        self.base_sleep = base_sleep
        self.sleep = sleep
        self.public = public
        self.failures = 0

    def progressed(self) -> None:
        self.failures = 0

    def failed(self, exc: Transient) -> None:
        """Sleep before the next attempt, or raise `download_failed` when none is left."""
        self.failures += 1
        if self.failures > self.retries:
            raise AppError("download_failed", f"{self.public}: {exc.reason} after {self.failures} attempts",
                           suffix=exc.reason)
        if exc.retry_after is not None:
            delay = exc.retry_after
        else:
            # Full jitter: workers that failed together do not come back together.
            delay = self.base_sleep * 2 ** (self.failures - 1) * random.uniform(0.5, 1.0)
        self.sleep(min(delay, MAX_SLEEP))

    def call(self, attempt: Callable[[], T]) -> T:
        while True:
            try:
                return attempt()
            except Transient as exc:
                self.failed(exc)
