"""The appliance's SQLite database (WAL) on the volume, shared by the `api` and `modelsync`
programs. Each thread gets its own connection; writers take `BEGIN IMMEDIATE` so two processes
never interleave a read-modify-write, and a busy database is waited on, not failed. The threads
of one process queue for the write lock on a lock of their own first: SQLite's busy handler
polls with sleeps of 1 to 100 ms, which a writer in the same process need not wait out. Its schema
is versioned and migrated in place when it is opened (services/store/migrations.py).
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from services.store.migrations import migrate


class Database:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._writer = threading.RLock()  # re-entered, a nested write still fails in SQLite, as before
        # Applies the missing migrations under BEGIN IMMEDIATE (safe to race); a newer database
        # is refused with `store_too_new`. `migrated`: the versions this opening applied.
        try:
            self.migrated = migrate(self.connection(), self.path)
        except BaseException:
            self.close()
            raise

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode; only an OS crash can lose
            # the last commits, and FULL would fsync on every progress update.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        with self._writer:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
