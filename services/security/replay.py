"""An envelope is accepted once: replay refusal where envelopes enter.

A captured envelope would otherwise run its job again (and cost GPU time) as often as an
attacker likes, even though its reply stays sealed. Two defences, used together:
- a memory of accepted envelopes (`sha256(epk + nonce)`, epk as X25519 reads it): durable in
  the Pod's SQLite store (services/store/envelopes.py), a bounded in-memory cache in a
  serverless worker (`ReplayCache`, which only sees its own worker's jobs);
- with `ENVELOPE_MAX_AGE` set, the sealed payload's `ts` must be recent, which bounds a replay in
  time on every worker, and lets both memories forget what is older than that.
The Pod's job runner re-opens stored envelopes later (queued jobs, adoption after a dead
worker); those are not acceptances, so neither check applies there.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

from services.errors import AppError
from services.security.envelope import OpenedPayload

FUTURE_SKEW_SECONDS = 60.0  # a client clock this far ahead is still believed
CACHE_ENTRIES = 65_536      # ~10 MB of keys; older ones are forgotten first


def check_fresh(opened: OpenedPayload, max_age: float, now: float | None = None) -> None:
    """With ENVELOPE_MAX_AGE set, an encrypted payload needs a recent `ts`."""
    if not opened.encrypted or max_age <= 0:
        return
    ts = opened.sent_at
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):  # json reads NaN
        raise AppError("envelope_expired", "this worker sets ENVELOPE_MAX_AGE: seal the payload with ts "
                       "(unix seconds; seal_request adds it)")
    age = (time.time() if now is None else now) - ts
    if age > max_age or age < -FUTURE_SKEW_SECONDS:
        raise AppError("envelope_expired", f"the envelope's ts is {age:.0f} s old; this worker accepts at "
                       f"most {max_age:g} s (and {FUTURE_SKEW_SECONDS:g} s ahead)")


def forget_before(max_age: float, now: float) -> float | None:
    """Acceptances older than this cannot be replayed past the age check any more (None: keep all).

    An envelope accepted at `seen` had ts <= seen + skew, so a replay of it passes the age check
    only before ts + max_age <= seen + skew + max_age."""
    return now - max_age - FUTURE_SKEW_SECONDS if max_age > 0 else None


def replayed() -> AppError:
    return AppError("envelope_replayed", "this envelope was accepted before; seal the payload again "
                    "(a fresh nonce)")


class ReplayCache:
    """The last `capacity` envelopes this process accepted (thread-safe)."""

    def __init__(self, max_age: float = 0.0, capacity: int = CACHE_ENTRIES):
        self.max_age = max_age
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def accept(self, opened: OpenedPayload) -> None:
        """Raise envelope_expired / envelope_replayed, or remember the envelope as used."""
        if not opened.encrypted:
            return
        now = time.time()
        check_fresh(opened, self.max_age, now)
        with self._lock:
            if opened.replay_key in self._seen:
                raise replayed()
            self._seen[opened.replay_key] = now
            self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = forget_before(self.max_age, now)
        while self._seen:
            key, seen = next(iter(self._seen.items()))
            if len(self._seen) <= self.capacity and (horizon is None or seen >= horizon):
                break
            del self._seen[key]
