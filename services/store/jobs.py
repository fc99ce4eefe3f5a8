"""Jobs accepted by the Pod API: durable from the moment `/run` answers.

A row moves queued -> running -> succeeded | failed | cancelled. The payload is kept as
received (an encrypted envelope stays encrypted at rest) so that a job whose worker died can be
run again by another one; its `prompt_id`, once known, lets the new worker resume waiting on
the prompt ComfyUI is still running instead of submitting it twice.

Nothing of an encrypted payload is stored in clear: its result is the sealed reply, and when it
fails only the error code's prefix is readable; `detail` stays empty and `result` holds the
sealed error (code, detail, node_errors), which its requester opens like any sealed reply.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from services.errors import AppError
from services.store import leases, webhooks
from services.store.db import Database
from services.store.states import JobState

LEASE_SECONDS = 15.0
MAX_ATTEMPTS = 3
# What QUEUE_MAX_JOBS bounds. The jobs_state index covers it: a search of the active rows only,
# however many finished jobs the table holds.
_COUNT_ACTIVE = "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')"


class QueueFull(AppError):
    """QUEUE_MAX_JOBS is reached: the job was not stored."""

    def __init__(self, active: int, limit: int):
        super().__init__("queue_full", f"{active} jobs are queued or running; this Pod takes at most {limit} "
                                       "(QUEUE_MAX_JOBS)")
        self.active, self.limit = active, limit


def _check_room(conn, limit: int) -> None:
    if limit:
        active = conn.execute(_COUNT_ACTIVE).fetchone()[0]
        if active >= limit:
            raise QueueFull(active, limit)


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    payload: str
    version_id: str | None
    prompt_id: str | None
    progress: float
    result: str | None
    error: str | None
    detail: str | None
    owner: str | None
    attempts: int
    comfy_attempts: int
    cancel_requested: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    webhook: str | None  # its URL, `sealed` (inside the encrypted payload) or None; never shown
    request_sha256: str | None  # of the canonical /run body (services/api/idempotency.py); never shown
    backend: int | None  # the Pod's ComfyUI backend that has its prompt (services/comfy/backends.py)

    def public(self) -> dict[str, Any]:
        view: dict[str, Any] = {"job_id": self.id, "state": self.state, "progress": self.progress,
                                "version_id": self.version_id, "prompt_id": self.prompt_id,
                                "created_at": self.created_at, "started_at": self.started_at,
                                "finished_at": self.finished_at, "attempts": self.attempts,
                                "comfy_attempts": self.comfy_attempts, "backend": self.backend}
        if self.result is not None:
            view["result"] = json.loads(self.result)
        if self.error is not None:
            view["error"], view["detail"] = self.error, self.detail
        return view


def _job(row) -> Job:
    return Job(**{k: row[k] for k in Job.__dataclass_fields__})


def _given(**fields) -> dict[str, Any]:
    """The fields that have a value: the others keep the row's."""
    return {k: v for k, v in fields.items() if v is not None}


class JobStore:
    def __init__(self, db: Database):
        self.db = db

    def create(self, payload: str, *, job_id: str | None = None, owner: str | None = None,
               version_id: str | None = None, limit: int = 0, webhook: str | None = None,
               request_sha256: str | None = None) -> tuple[Job, bool]:
        """Insert a job; with `owner` it starts out running (a synchronous request runs it at once).

        Returns (job, created). A client-chosen `job_id` that exists already returns that job,
        so retrying a request after a lost connection never runs it twice, even when the queue is
        full. Otherwise, with `limit` jobs queued or running, raises QueueFull and stores nothing;
        counted inside the write transaction, so API workers racing for the last slot cannot
        overshoot it.
        """
        new_id = job_id or uuid.uuid4().hex
        now = time.time()
        with self.db.write() as conn:
            existing = conn.execute("SELECT * FROM jobs WHERE id = ?", (new_id,)).fetchone()
            if existing is not None:
                return _job(existing), False
            _check_room(conn, limit)
            state = JobState.RUNNING if owner else JobState.QUEUED
            conn.execute("INSERT INTO jobs (id, state, payload, version_id, owner, heartbeat_at, attempts,"
                         " created_at, started_at, webhook, request_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (new_id, state, payload, version_id, owner, now if owner else None,
                          1 if owner else 0, now, now if owner else None, webhook, request_sha256))
            return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (new_id,)).fetchone()), True

    def get(self, job_id: str) -> Job | None:
        rows = self.db.read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list(self, state: str | None = None, limit: int = 100) -> list[Job]:
        if state:
            rows = self.db.read("SELECT * FROM jobs WHERE state = ? ORDER BY created_at DESC LIMIT ?", (state, limit))
        else:
            rows = self.db.read("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_job(r) for r in rows]

    def active(self) -> int:
        """Jobs queued or running."""
        return self.db.read(_COUNT_ACTIVE)[0][0]

    def check_room(self, limit: int, job_id: str | None = None) -> None:
        """Raise QueueFull when `create` would refuse a new job now, unless `job_id` exists (a retry).

        Advisory: the answer may change before `create`, which checks again."""
        if limit and (job_id is None or self.get(job_id) is None):
            _check_room(self.db.connection(), limit)

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.db.read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    def claim(self, owner: str) -> Job | None:
        self._fail_exhausted()
        row = leases.claim(self.db, "jobs", owner, LEASE_SECONDS, MAX_ATTEMPTS, started_column="started_at")
        return _job(row) if row is not None else None

    def heartbeat(self, owner: str, job_id: str, **fields) -> bool:
        return leases.heartbeat(self.db, "jobs", owner, job_id, **fields)

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        rows = self.db.read(f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", tuple(job_ids))
        return {r["id"] for r in rows}

    def finish(self, owner: str, job_id: str, result: Any, timings_ms: dict[str, float] | None = None,
               comfy_attempts: int | None = None) -> bool:
        """`timings_ms`: the runner's phase times, kept in their own column for `/metrics` (an
        encrypted job's result is sealed); only durations, nothing of the payload.
        `comfy_attempts`: when given, written with the end (the executor's deferred count)."""
        return self._end(owner, job_id, JobState.SUCCEEDED, result=json.dumps(result), progress=100.0,
                         timings_ms=json.dumps(timings_ms) if timings_ms else None,
                         **_given(comfy_attempts=comfy_attempts))

    def fail(self, owner: str, job_id: str, error: str, detail: str | None, state: str = JobState.FAILED,
             sealed: dict[str, Any] | None = None, comfy_attempts: int | None = None) -> bool:
        """`sealed`: the sealed error of an encrypted job; then `error` is the bare code prefix."""
        fields = _given(result=json.dumps(sealed) if sealed is not None else None, comfy_attempts=comfy_attempts)
        return self._end(owner, job_id, state, error=error, detail=detail, **fields)

    def _end(self, owner: str, job_id: str, state: str, **fields) -> bool:
        with self.db.write() as conn:  # the final state and the webhook it owes: one commit
            ended = leases.end_in(conn, "jobs", owner, job_id, state, finished_at=time.time(), **fields)
            if ended:
                webhooks.enqueue(conn, job_id)
            return ended

    def request_cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; a running one is flagged for its worker."""
        now = time.time()
        with self.db.write() as conn:
            cur = conn.execute("UPDATE jobs SET state = 'cancelled', error = 'cancelled', detail = 'cancelled before it ran',"
                               " finished_at = ? WHERE id = ? AND state = 'queued'", (now, job_id))
            if cur.rowcount:
                webhooks.enqueue(conn, job_id)
            conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'", (job_id,))
        return self.get(job_id)

    def _fail_exhausted(self) -> None:
        for row in leases.exhausted(self.db, "jobs", LEASE_SECONDS, MAX_ATTEMPTS):
            self._end(row["owner"], row["id"], JobState.FAILED, error="worker_lost",
                      detail=f"the worker running this job died {row['attempts']} times")
