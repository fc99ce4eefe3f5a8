"""The state database's schema, as an ordered list of migrations; the only place that defines it.

The database's `PRAGMA user_version` is the number of migrations applied to it. Opening it applies
the missing ones in order, all inside one `BEGIN IMMEDIATE` transaction that re-reads the version
once it holds the write lock: of several processes opening the same database at once (the API
workers and `modelsync` start together) one applies each migration and the others find it done.

Every step is idempotent (`IF NOT EXISTS`, a column added only when `PRAGMA table_info` lacks
it), because databases written before versioning have user_version 0 but may already hold what
later migrations add: they are adopted, not broken. A database whose version is newer than the
code knows is refused (`store_too_new`), never used or downgraded.

To change the schema, append a migration; never edit one that has shipped.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from services.errors import AppError


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)
    return apply


def _steps(*steps: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for step in steps:
            step(conn)
    return apply


def _add_column(table: str, column: str, definition: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return apply


_V1_BASE = _statements(
    """CREATE TABLE IF NOT EXISTS jobs (
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
)""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at)",
    """CREATE TABLE IF NOT EXISTS downloads (
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
)""",
    "CREATE INDEX IF NOT EXISTS downloads_state ON downloads(state, created_at)",
    # Pod mode: which ComfyUI runtime (version) the `comfyui` program runs, and who may use it.
    """CREATE TABLE IF NOT EXISTS comfy_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    runtime TEXT,                     -- label of the runtime ComfyUI runs (version id or comfy_home:<path>)
    target TEXT,                      -- set while a worker switches ComfyUI to another runtime
    switcher TEXT,
    switch_heartbeat REAL
)""",
    """CREATE TABLE IF NOT EXISTS comfy_leases (
    owner TEXT PRIMARY KEY,           -- one row per API worker: how many of its jobs use ComfyUI
    runtime TEXT NOT NULL,
    count INTEGER NOT NULL,
    heartbeat_at REAL NOT NULL
)""",
    "INSERT OR IGNORE INTO comfy_state (id) VALUES (1)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs, downloads, comfy_state, comfy_leases (the schema before versions)", _V1_BASE),
    # `"replace": true` of /download: without it a different file at the target is not replaced.
    Migration(2, "downloads.replace_existing",
              _add_column("downloads", "replace_existing", "INTEGER NOT NULL DEFAULT 0")),
    # Encrypted payloads accepted by /run: a replay of the same envelope is refused
    # (services/security/replay.py); `key` is sha256(epk + nonce) in hex, `job_id` the job it made.
    Migration(3, "envelopes", _statements(
        """CREATE TABLE IF NOT EXISTS envelopes (
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    seen_at REAL NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS envelopes_seen ON envelopes(seen_at)",
    )),
    # Times the job was handed to ComfyUI (JOB_MAX_ATTEMPTS), apart from `attempts`, the times
    # a worker claimed it: a job whose prompt died with ComfyUI is submitted again, and the count
    # survives its worker, so a job that crashes ComfyUI every time is not retried forever.
    Migration(4, "jobs.comfy_attempts", _add_column("jobs", "comfy_attempts", "INTEGER NOT NULL DEFAULT 0")),
    # Signed webhooks (services/webhooks): `jobs.webhook` is where the job's webhook goes (its URL, or
    # `sealed` when the URL is inside the job's encrypted payload, never stored in clear); a job
    # that ends with one gets a `webhooks` row in the same transaction, delivered and retried by
    # the API workers (services/api/webhooks.py). `id` is the message's `webhook-id`.
    Migration(5, "jobs.webhook, webhooks", _steps(
        _add_column("jobs", "webhook", "TEXT"),
        _statements(
            """CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,              -- queued | running | delivered | failed
    owner TEXT,
    heartbeat_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,             -- a queued row waits for this time (the back-off)
    status INTEGER,                   -- the receiver's last HTTP status
    error TEXT,                       -- why the last attempt did not count (http_500, timeout, ...)
    created_at REAL NOT NULL,
    finished_at REAL
)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS webhooks_job ON webhooks(job_id)",
            "CREATE INDEX IF NOT EXISTS webhooks_state ON webhooks(state, due_at)",
        ))),
    # The runner's phase times of a succeeded job (JSON of milliseconds by phase), for /metrics'
    # appliance_job_phase_seconds: an encrypted job's result is sealed, and durations are no payload.
    Migration(6, "jobs.timings_ms", _add_column("jobs", "timings_ms", "TEXT")),
    # sha256 of the canonical `/run` body a job was made from (an envelope's as sent), so that a
    # request repeating an `Idempotency-Key` with another body is told apart: 409 idempotency_conflict.
    Migration(7, "jobs.request_sha256", _add_column("jobs", "request_sha256", "TEXT")),
    # Multi-GPU Pods (services/comfy/backends.py): the runtime, switch and leases of each ComfyUI
    # backend instead of the one `comfyui` program; a job records its backend, so that a worker
    # adopting it (or cancelling it) asks the ComfyUI that has its prompt. Leases are live
    # heartbeats, not history: the old table is dropped, not copied.
    Migration(8, "comfy_backends, comfy_leases per backend, jobs.backend", _steps(_statements(
        """CREATE TABLE IF NOT EXISTS comfy_backends (
    backend INTEGER PRIMARY KEY,      -- services/comfy/backends.py's index; 0 is the `comfyui` program
    runtime TEXT,                     -- label of the runtime it runs (version id or comfy_home:<path>)
    target TEXT,                      -- set while a worker switches it to another runtime
    switcher TEXT,
    switch_heartbeat REAL
)""",
        "INSERT OR IGNORE INTO comfy_backends (backend, runtime) SELECT 0, runtime FROM comfy_state WHERE id = 1",
        "DROP TABLE comfy_state",
        "DROP TABLE comfy_leases",
        """CREATE TABLE comfy_leases (
    owner TEXT NOT NULL,              -- an API worker
    backend INTEGER NOT NULL,
    runtime TEXT NOT NULL,
    count INTEGER NOT NULL,           -- how many of the worker's jobs use that backend
    heartbeat_at REAL NOT NULL,
    PRIMARY KEY (owner, backend)
)""",
    ), _add_column("jobs", "backend", "INTEGER"))),
)
LATEST = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1)), "migrations are numbered 1, 2, ..."


def user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _refuse_newer(found: int, path: Path) -> None:
    if found > LATEST:
        raise AppError("store_too_new", f"{path} has schema version {found}; this code knows up to "
                                        f"{LATEST}. Run the newer appliance, or point STATE_DB at another file.")


def migrate(conn: sqlite3.Connection, path: Path) -> tuple[int, ...]:
    """Bring the database to LATEST; returns the versions this call applied (none when up to date).

    `conn` must be in autocommit mode (isolation_level=None): the transaction is managed here.
    """
    found = user_version(conn)
    _refuse_newer(found, path)
    if found == LATEST:
        return ()
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = user_version(conn)  # another process may have migrated while we waited for the lock
        _refuse_newer(found, path)
        applied = []
        for migration in MIGRATIONS[found:]:
            migration.apply(conn)
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
            applied.append(migration.version)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return tuple(applied)
