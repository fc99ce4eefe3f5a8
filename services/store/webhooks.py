"""Webhooks owed to job receivers, durable: a row from the moment a job with a webhook ends.

`enqueue` runs inside the transaction that writes the job's final state (services/store/jobs.py),
so no job ends without its webhook row, whichever process or path ended it. A row moves
queued -> running -> delivered | failed, and from running back to queued (with `due_at` the
back-off's end) after an attempt that may succeed later. Rows are claimed with the lease helpers
(services/store/leases.py), so one API worker delivers each, and a row whose worker died (or
was restarted) mid-attempt is taken over once its lease expires.
"""
from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass

from services.store import leases
from services.store.db import Database


@dataclass(frozen=True)
class Webhook:
    id: str              # the `webhook-id` header: the same on every attempt
    job_id: str
    state: str
    attempts: int        # attempts made, this one included once claimed
    status: int | None
    error: str | None


def _webhook(row) -> Webhook:
    return Webhook(**{k: row[k] for k in Webhook.__dataclass_fields__})


def enqueue(conn: sqlite3.Connection, job_id: str) -> None:
    """Owe the job's webhook, if it has one; inside the caller's write transaction."""
    now = time.time()
    conn.execute("INSERT OR IGNORE INTO webhooks (id, job_id, state, due_at, created_at)"
                 " SELECT ?, id, 'queued', ?, ? FROM jobs WHERE id = ? AND webhook IS NOT NULL",
                 (f"msg_{uuid.uuid4().hex}", now, now, job_id))


class WebhookStore:
    def __init__(self, db: Database, lease: float, max_attempts: int):
        self.db, self.lease, self.max_attempts = db, lease, max_attempts

    def claim(self, owner: str) -> Webhook | None:
        # Every worker polls twice a second: a read first, so that a Pod with nothing owed (most
        # of the time, or always without webhooks) takes no write lock for it.
        if not self.db.read("SELECT 1 FROM webhooks WHERE state IN ('queued', 'running') LIMIT 1"):
            return None
        self._fail_exhausted()
        row = leases.claim(self.db, "webhooks", owner, self.lease, self.max_attempts, due_column="due_at")
        return _webhook(row) if row is not None else None

    def get(self, webhook_id: str) -> Webhook | None:
        rows = self.db.read("SELECT * FROM webhooks WHERE id = ?", (webhook_id,))
        return _webhook(rows[0]) if rows else None

    def delivered(self, owner: str, webhook_id: str, status: int) -> bool:
        return leases.end(self.db, "webhooks", owner, webhook_id, "delivered", status=status, error=None,
                          finished_at=time.time())

    def retry(self, owner: str, webhook_id: str, delay: float, status: int | None, error: str) -> bool:
        return leases.end(self.db, "webhooks", owner, webhook_id, "queued", due_at=time.time() + delay,
                          status=status, error=error)

    def give_up(self, owner: str, webhook_id: str, status: int | None, error: str) -> bool:
        return leases.end(self.db, "webhooks", owner, webhook_id, "failed", status=status, error=error,
                          finished_at=time.time())

    def release(self, owner: str) -> None:
        """A stopping worker hands its attempts in flight to the next claim at once."""
        leases.expire(self.db, "webhooks", owner)

    def _fail_exhausted(self) -> None:
        for row in leases.exhausted(self.db, "webhooks", self.lease, self.max_attempts):
            self.give_up(row["owner"], row["id"], row["status"], "worker_lost")
