"""Queued model downloads: enqueued by the API's `/download`, worked by the `modelsync` program.

A row moves queued -> running -> done | failed | cancelled. Progress (`bytes_done`,
`bytes_total`) is written by the worker as the bytes arrive; a worker killed mid-file leaves
its row `running` with a stale heartbeat, and the next worker re-claims it and resumes from
the partial file. `replace_existing` records the request's `"replace": true`: without it the
worker refuses to replace a different file already at the target (`model_exists`).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from services.net.target import public_url
from services.store import leases
from services.store.db import Database
from services.store.states import DownloadState

LEASE_SECONDS = 30.0
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Download:
    id: str
    state: str
    url: str
    type: str
    filename: str
    sha256: str | None
    size: int | None
    bytes_done: int
    bytes_total: int | None
    path: str | None
    error: str | None
    detail: str | None
    attempts: int
    created_at: float
    updated_at: float
    replace_existing: int = 0

    def public(self) -> dict[str, Any]:
        """What GET /downloads/{id} shows: the URL without user:password, query (a signed URL's
        credentials) or fragment."""
        return {"download_id": self.id, "state": self.state, "url": public_url(self.url),
                "type": self.type, "filename": self.filename, "sha256": self.sha256,
                "replace": bool(self.replace_existing),
                "bytes_done": self.bytes_done, "bytes_total": self.bytes_total, "path": self.path,
                "error": self.error, "detail": self.detail, "attempts": self.attempts,
                "created_at": self.created_at, "updated_at": self.updated_at}


def _row(row) -> Download:
    return Download(**{k: row[k] for k in Download.__dataclass_fields__})


class DownloadStore:
    def __init__(self, db: Database):
        self.db = db

    def enqueue(self, *, url: str, type: str, filename: str, sha256: str | None = None,
                size: int | None = None, replace: bool = False) -> Download:
        """Queue a download; the same target already queued or running is joined, not repeated."""
        now = time.time()
        with self.db.write() as conn:
            existing = conn.execute(
                "SELECT * FROM downloads WHERE type = ? AND filename = ? AND state IN ('queued', 'running')",
                (type, filename)).fetchone()
            if existing is not None:
                return _row(existing)
            new_id = uuid.uuid4().hex
            conn.execute("INSERT INTO downloads (id, state, url, type, filename, sha256, size, bytes_total,"
                         " created_at, updated_at, replace_existing) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (new_id, url, type, filename, sha256, size, size, now, now, int(replace)))
            return _row(conn.execute("SELECT * FROM downloads WHERE id = ?", (new_id,)).fetchone())

    def get(self, download_id: str) -> Download | None:
        rows = self.db.read("SELECT * FROM downloads WHERE id = ?", (download_id,))
        return _row(rows[0]) if rows else None

    def list(self, limit: int = 100) -> list[Download]:
        return [_row(r) for r in self.db.read("SELECT * FROM downloads ORDER BY created_at DESC LIMIT ?", (limit,))]

    def claim(self, owner: str) -> Download | None:
        self._fail_exhausted()
        row = leases.claim(self.db, "downloads", owner, LEASE_SECONDS, MAX_ATTEMPTS)
        return _row(row) if row else None

    def expire_dead_owners(self, alive: Callable[[str], bool]) -> list[str]:
        """End the leases of running rows whose owner is known to be dead, so that a restarted
        worker resumes them at once instead of after LEASE_SECONDS."""
        owners = {r["owner"] for r in self.db.read("SELECT DISTINCT owner FROM downloads"
                                                   " WHERE state = 'running' AND owner IS NOT NULL")}
        dead = sorted(owner for owner in owners if not alive(owner))
        for owner in dead:
            leases.expire(self.db, "downloads", owner)
        return dead

    def progress(self, owner: str, download_id: str, bytes_done: int, bytes_total: int | None) -> bool:
        return leases.heartbeat(self.db, "downloads", owner, download_id, bytes_done=bytes_done,
                                bytes_total=bytes_total, updated_at=time.time())

    def finish(self, owner: str, download_id: str, *, path: str, sha256: str, size: int) -> None:
        self._end(owner, download_id, DownloadState.DONE, path=path, sha256=sha256, bytes_done=size, bytes_total=size)

    def fail(self, owner: str, download_id: str, error: str, detail: str) -> None:
        self._end(owner, download_id, DownloadState.FAILED, error=error, detail=detail)

    def _end(self, owner: str, download_id: str, state: str, **fields) -> None:
        leases.end(self.db, "downloads", owner, download_id, state, updated_at=time.time(), **fields)

    def _fail_exhausted(self) -> None:
        for row in leases.exhausted(self.db, "downloads", LEASE_SECONDS, MAX_ATTEMPTS):
            self._end(row["owner"], row["id"], DownloadState.FAILED, error="download_failed:worker_died",
                      detail=f"the download worker died {row['attempts']} times on this file")
