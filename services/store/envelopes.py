"""The Pod's durable memory of accepted envelopes: one row per envelope, shared by every API
worker and kept across restarts (the `envelopes` table), so a replay is refused whichever worker
it reaches. The rules themselves are in services/security/replay.py."""
from __future__ import annotations

import time

from services.security.replay import forget_before
from services.store.db import Database


class EnvelopeLedger:
    def __init__(self, db: Database, max_age: float = 0.0):
        self.db = db
        self.max_age = max_age

    def claim(self, key: str, job_id: str) -> str:
        """Record the envelope for `job_id`; returns the job that first claimed it (`job_id` when new)."""
        now = time.time()
        with self.db.write() as conn:
            horizon = forget_before(self.max_age, now)
            if horizon is not None:
                conn.execute("DELETE FROM envelopes WHERE seen_at < ?", (horizon,))
            conn.execute("INSERT OR IGNORE INTO envelopes (key, job_id, seen_at) VALUES (?, ?, ?)",
                         (key, job_id, now))
            return conn.execute("SELECT job_id FROM envelopes WHERE key = ?", (key,)).fetchone()["job_id"]
