"""Work items with leases: how `jobs`, `downloads` and `webhooks` rows are claimed by one worker at a time.

A worker claims the oldest queued row, or a running row whose owner stopped heartbeating for
longer than the lease (its process was killed), inside one `BEGIN IMMEDIATE` transaction, so
two workers in two processes never claim the same row. The claimant heartbeats while it works.
"""
from __future__ import annotations

import sqlite3
import time

from services.store.db import Database

_TABLES = ("jobs", "downloads", "webhooks")


def claim(db: Database, table: str, owner: str, lease: float, max_attempts: int,
          due_column: str | None = None, started_column: str | None = None) -> sqlite3.Row | None:
    """`due_column`: a queued row whose time in that column is still ahead is not claimed yet
    (a retry's back-off). `started_column`: set to now by the first claim, in the same write."""
    assert table in _TABLES and due_column in (None, "due_at") and started_column in (None, "started_at")
    now = time.time()
    queued, due = (f"(state = 'queued' AND {due_column} <= ?)", (now,)) if due_column else ("state = 'queued'", ())
    with db.write() as conn:
        row = conn.execute(
            f"SELECT * FROM {table} WHERE ({queued} OR (state = 'running' AND heartbeat_at < ?))"
            " AND attempts < ? ORDER BY created_at LIMIT 1", (*due, now - lease, max_attempts)).fetchone()
        if row is None:
            return None
        started = f", {started_column} = COALESCE({started_column}, ?)" if started_column else ""
        conn.execute(f"UPDATE {table} SET state = 'running', owner = ?, heartbeat_at = ?, attempts = attempts + 1"
                     f"{started} WHERE id = ?", (owner, now, *((now,) if started_column else ()), row["id"]))
        return conn.execute(f"SELECT * FROM {table} WHERE id = ?", (row["id"],)).fetchone()


def expire(db: Database, table: str, owner: str) -> None:
    """End the lease of every row `owner` runs: the next claim may take them over."""
    assert table in _TABLES
    with db.write() as conn:
        conn.execute(f"UPDATE {table} SET heartbeat_at = 0 WHERE owner = ? AND state = 'running'", (owner,))


def heartbeat(db: Database, table: str, owner: str, item_id: str, **fields) -> bool:
    """Refresh the lease (and set progress fields); False if the row is no longer ours."""
    assert table in _TABLES
    sets = ", ".join(f"{k} = ?" for k in fields)
    with db.write() as conn:
        cur = conn.execute(f"UPDATE {table} SET heartbeat_at = ?{', ' + sets if sets else ''}"
                           " WHERE id = ? AND owner = ? AND state = 'running'",
                           (time.time(), *fields.values(), item_id, owner))
        return cur.rowcount == 1


def exhausted(db: Database, table: str, lease: float, max_attempts: int) -> list[sqlite3.Row]:
    """Rows whose workers died `max_attempts` times: they must fail, not loop forever."""
    assert table in _TABLES
    return db.read(f"SELECT * FROM {table} WHERE state = 'running' AND heartbeat_at < ? AND attempts >= ?",
                   (time.time() - lease, max_attempts))


def end(db: Database, table: str, owner: str, item_id: str, state: str, **fields) -> bool:
    """Move a running row that `owner` holds to a final state (or back to queued, for a retry);
    False if it is no longer ours."""
    with db.write() as conn:
        return end_in(conn, table, owner, item_id, state, **fields)


def end_in(conn: sqlite3.Connection, table: str, owner: str, item_id: str, state: str, **fields) -> bool:
    """`end` inside the caller's write transaction, so that what goes with the end (a job's
    webhook) is written in the same commit."""
    assert table in _TABLES
    sets = "".join(f", {k} = ?" for k in fields)
    cur = conn.execute(f"UPDATE {table} SET state = ?{sets} WHERE id = ? AND owner = ? AND state = 'running'",
                       (state, *fields.values(), item_id, owner))
    return cur.rowcount == 1
