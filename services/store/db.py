"""The appliance's SQLite database (WAL) on the volume, shared by the `api` and `modelsync`
programs. Each thread gets its own connection; writers take `BEGIN IMMEDIATE` so two processes
never interleave a read-modify-write, and a busy database is waited on, not failed.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,              -- queued | running | succeeded | failed | cancelled
    payload TEXT NOT NULL,            -- the request body as received (an envelope stays encrypted)
    version_id TEXT,
    prompt_id TEXT,
    progress REAL NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    detail TEXT,
    owner TEXT,                       -- worker that runs it; its heartbeat proves it is alive
    heartbeat_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
CREATE TABLE IF NOT EXISTS downloads (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,              -- queued | running | done | failed | cancelled
    url TEXT NOT NULL,
    type TEXT NOT NULL,
    filename TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER,
    path TEXT,
    error TEXT,
    detail TEXT,
    owner TEXT,
    heartbeat_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS downloads_state ON downloads(state, created_at);
-- Pod mode: which ComfyUI runtime (version) the `comfyui` program runs, and who may use it.
CREATE TABLE IF NOT EXISTS comfy_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    runtime TEXT,                     -- label of the runtime ComfyUI runs (version id or comfy_home:<path>)
    target TEXT,                      -- set while a worker switches ComfyUI to another runtime
    switcher TEXT,
    switch_heartbeat REAL
);
CREATE TABLE IF NOT EXISTS comfy_leases (
    owner TEXT PRIMARY KEY,           -- one row per API worker: how many of its jobs use ComfyUI
    runtime TEXT NOT NULL,
    count INTEGER NOT NULL,
    heartbeat_at REAL NOT NULL
);
-- Encrypted payloads accepted by /run: a replay of the same envelope is refused (services/security/replay.py).
CREATE TABLE IF NOT EXISTS envelopes (
    key TEXT PRIMARY KEY,             -- sha256(epk + nonce), hex (services/security/envelope.py)
    job_id TEXT NOT NULL,             -- the job it created: a retry naming that job_id gets it back
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS envelopes_seen ON envelopes(seen_at);
INSERT OR IGNORE INTO comfy_state (id) VALUES (1);
"""


class Database:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # executescript manages its own transaction; IF NOT EXISTS makes it safe to race.
        self.connection().executescript(SCHEMA)

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
