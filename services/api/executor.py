"""Runs the Pod API's jobs inside each gunicorn worker, durably.

Every job is a row in the store before `/run` answers. A synchronous request runs its own job
at once in this worker; asynchronous jobs are claimed from the store by whichever worker has
room. While a job runs, its worker heartbeats the row; if the worker dies, the lease expires
and another worker claims the job and resumes waiting on its ComfyUI prompt (or submits it
again when ComfyUI lost it). A cancel flag set by `DELETE /jobs/{id}` in any worker is picked
up by the owner's heartbeat.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from typing import Any

from services import logs
from services.api.progress_board import MIN_INTERVAL, ProgressBoard
from services.comfy.client import Progress
from services.errors import AppError
from services.jobs.runner import JobRunner
from services.periodic import Periodic
from services.security.envelope import OpenedPayload, is_envelope, open_payload
from services.store.jobs import LEASE_SECONDS, Job, JobStore
from services.timeouts import at_most

log = logs.get("api.executor")

HEARTBEAT_SECONDS = LEASE_SECONDS / 5
IDLE_POLL_SECONDS = 0.5


class JobExecutor:
    def __init__(self, store: JobStore, runner: JobRunner, settings, owner: str, *, concurrency: int = 16):
        self.store = store
        self.runner = runner
        self.settings = settings
        self.owner = owner
        self.concurrency = concurrency
        self.tasks: dict[str, asyncio.Task] = {}
        self.progress: dict[str, float] = {}
        # A job's ComfyUI attempt count not written yet: it goes with the row's next write (see _on_attempt).
        self.unwritten_attempts: dict[str, int] = {}
        self.board = ProgressBoard(settings.run_dir)  # the same progress for every worker
        self.first_progress: dict[str, Progress] = {}  # jobs' latest progress until it goes on the board
        self._wake = asyncio.Event()
        self._claimer: asyncio.Task | None = None
        self._heartbeat = Periodic("heartbeat", HEARTBEAT_SECONDS, lambda: asyncio.to_thread(self._beat))

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._claimer = asyncio.get_running_loop().create_task(self._claim_loop())
        self._heartbeat.start()

    async def stop(self) -> None:
        await self._heartbeat.stop()
        if self._claimer is not None:
            self._claimer.cancel()
            await asyncio.gather(self._claimer, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    # ---- entry points -----------------------------------------------------------------
    async def run_now(self, body: Any, job_id: str | None, *, webhook: str | None = None,
                      request_sha256: str | None = None) -> tuple[Job, asyncio.Task | None]:
        """Store a job owned by this worker and start it; an existing job_id is returned as is.
        Both entry points raise QueueFull when QUEUE_MAX_JOBS jobs are queued or running.
        `webhook`: where the job's end is POSTed (services/api/webhooks.py), None for nowhere.
        `request_sha256`: the request's hash, kept to tell a repeated Idempotency-Key's body apart."""
        job, created = await asyncio.to_thread(self.store.create, json.dumps(body), job_id=job_id,
                                               owner=self.owner, version_id=_version_hint(body),
                                               limit=self.settings.queue_max_jobs, webhook=webhook,
                                               request_sha256=request_sha256)
        if not created:
            return job, self.tasks.get(job.id)
        return job, self._spawn(job)

    async def enqueue(self, body: Any, job_id: str | None, *, webhook: str | None = None,
                      request_sha256: str | None = None) -> Job:
        job, created = await asyncio.to_thread(self.store.create, json.dumps(body), job_id=job_id,
                                               version_id=_version_hint(body), limit=self.settings.queue_max_jobs,
                                               webhook=webhook, request_sha256=request_sha256)
        if created:
            self.wake()
        return job

    # ---- loops ------------------------------------------------------------------------
    def _spawn(self, job: Job) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._execute(job))
        self.tasks[job.id] = task
        task.add_done_callback(lambda _t, job_id=job.id: self._forget(job_id))
        return task

    def _forget(self, job_id: str) -> None:
        self.tasks.pop(job_id, None)
        self.progress.pop(job_id, None)
        self.unwritten_attempts.pop(job_id, None)
        self.first_progress.pop(job_id, None)
        self.board.remove(job_id)
        self.wake()  # a slot is free

    async def _claim_loop(self) -> None:
        while True:
            try:
                if len(self.tasks) < self.concurrency:
                    job = await asyncio.to_thread(self.store.claim, self.owner)
                    if job is not None:
                        self._spawn(job)
                        continue
                self._wake.clear()
                await at_most(IDLE_POLL_SECONDS, self._wake.wait())
            except asyncio.CancelledError:
                raise
            except Exception:  # a locked or vanished database must not kill the loop
                log.error("claim_failed", exc_info=True)
                await asyncio.sleep(1)

    def _beat(self) -> None:
        job_ids = list(self.tasks)
        for job_id in job_ids:
            self.store.heartbeat(self.owner, job_id, progress=self.progress.get(job_id, 0.0))
        for job_id in self.store.cancel_requested(job_ids):
            task = self.tasks.get(job_id)
            if task is not None:
                task.get_loop().call_soon_threadsafe(task.cancel)

    # ---- one job ----------------------------------------------------------------------
    async def _execute(self, job: Job) -> dict[str, Any]:
        """Run a job to its end and record it; returns what the synchronous caller is sent."""
        log.info("job_start", job_id=job.id, attempt=job.attempts, resume=bool(job.prompt_id))
        opened = OpenedPayload(None, None)  # until the stored body is opened, errors carry no payload
        try:
            opened = open_payload(json.loads(job.payload), self.settings)
            result = await self.runner.run(
                opened.payload, job_id=job.id, resume_prompt_id=job.prompt_id, resume_backend=job.backend,
                attempts=job.comfy_attempts, on_progress=lambda p, job_id=job.id: self._on_progress(job_id, p),
                on_submitted=lambda prompt_id, backend, job_id=job.id: self._on_submitted(job_id, prompt_id, backend),
                on_attempt=lambda n, job=job: self._on_attempt(job, n), encrypted=opened.encrypted)
            reply = opened.reply(result)
            await asyncio.to_thread(self.store.finish, self.owner, job.id, reply, result.get("timings_ms"),
                                    self.unwritten_attempts.pop(job.id, None))
            return {"status": 200, "body": reply}
        except AppError as exc:
            if exc.prefix == "interrupted" and await asyncio.to_thread(self.store.cancel_requested, [job.id]):
                # DELETE /jobs/{id} in another worker interrupted ComfyUI before our heartbeat saw
                # the flag: the job was cancelled, not broken.
                exc = AppError("cancelled", "cancelled while running", extra=exc.extra)
            body = opened.error(exc)
            await asyncio.to_thread(self._record_failure, job.id, exc, body, opened.encrypted)
            return {"status": exc.status, "body": {**body, "job_id": job.id}}
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.store.fail, self.owner, job.id, "cancelled",
                                                   "cancelled while running", "cancelled",
                                                   comfy_attempts=self.unwritten_attempts.pop(job.id, None)))
            raise
        except Exception:
            # A bug, not the job: left running, its lease would expire and the job run again
            # (three times, then worker_lost) — a poison job. It fails once, with the trace logged.
            log.error("job_failed_by_bug", exc_info=True, job_id=job.id)
            exc = AppError("internal_error", "unexpected error while running the job; see the api log")
            body = opened.error(exc)
            await asyncio.to_thread(self._record_failure, job.id, exc, body, opened.encrypted)
            return {"status": exc.status, "body": {**body, "job_id": job.id}}

    def _record_failure(self, job_id: str, exc: AppError, body: dict[str, Any], encrypted: bool) -> None:
        state = "cancelled" if exc.prefix == "cancelled" else "failed"
        attempts = self.unwritten_attempts.pop(job_id, None)
        if encrypted:  # the row keeps what the requester got: the bare code and the sealed rest
            sealed = {k: v for k, v in body.items() if k != "error"}
            self.store.fail(self.owner, job_id, exc.prefix, None, state, sealed=sealed, comfy_attempts=attempts)
        else:
            self.store.fail(self.owner, job_id, exc.code, exc.detail, state, comfy_attempts=attempts)

    def _on_progress(self, job_id: str, progress: Progress) -> None:
        self.progress[job_id] = progress.percent
        if self.board.shows(job_id):
            self.board.post(job_id, progress)
            return
        # A job's progress goes on the board MIN_INTERVAL after its first (the latest by then):
        # most quick jobs have ended before, and a board file written and removed at once costs
        # the event loop two file operations per job for nothing.
        if job_id not in self.first_progress:
            asyncio.get_running_loop().call_later(MIN_INTERVAL, self._post_first, job_id)
        self.first_progress[job_id] = progress

    def _post_first(self, job_id: str) -> None:
        progress = self.first_progress.pop(job_id, None)
        if progress is not None and job_id in self.tasks:
            self.board.post(job_id, progress)

    async def _on_submitted(self, job_id: str, prompt_id: str, backend: int | None) -> None:
        attempts = self.unwritten_attempts.pop(job_id, None)
        await asyncio.to_thread(self.store.heartbeat, self.owner, job_id, prompt_id=prompt_id, backend=backend,
                                **({"comfy_attempts": attempts} if attempts is not None else {}))

    async def _on_attempt(self, job: Job, attempt: int) -> None:
        if attempt == job.comfy_attempts + 1 and job.prompt_id is None:
            # This run's first attempt, and the row names no prompt to forget: the count is written
            # with the submission (or the job's end), one write less per job. A worker that dies
            # before then leaves the count as it was, and the row no prompt to resume: the next
            # worker makes this attempt again, as it would have anyway.
            self.unwritten_attempts[job.id] = attempt
            return
        # A new attempt submits a new prompt: the old prompt_id must not be resumed any more.
        self.unwritten_attempts.pop(job.id, None)
        await asyncio.to_thread(self.store.heartbeat, self.owner, job.id, comfy_attempts=attempt, prompt_id=None,
                                backend=None)


def worker_id() -> str:
    """Names this API worker in leases: host, pid and a nonce (pids are reused after restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _version_hint(body: Any) -> str | None:
    if is_envelope(body):
        return None  # an encrypted job's version is part of its sealed payload
    value = body.get("version_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None
