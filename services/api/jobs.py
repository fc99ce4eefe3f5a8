"""`/run` and `/jobs`: submitting work, waiting for it, reading and cancelling it.

`/run` checks the payload before anything is stored (bad input is a 4xx at once, never a
failed job later), then either runs the job in this worker and answers with its result
(default) or answers `202 {"job_id"}` at once (`"async": true`). `async` and `job_id` may sit
beside an encrypted envelope: they say how to run it, not what.

An encrypted request is accepted once (a replay gets 409 `envelope_replayed`, except a retry
that names the `job_id` the envelope created: it gets that job back), and every answer to it,
errors included, is sealed for its sender.

An `Idempotency-Key` header names the job like `job_id` does and also pins the request body:
the same key with another body is 409 `idempotency_conflict` (services/api/idempotency.py).

Backpressure: with QUEUE_MAX_JOBS jobs queued or running, a new job gets 503 `queue_full` with
`Retry-After` and nothing is stored; a retry naming an existing `job_id` still gets its job.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import falcon
from falcon.asgi import SSEvent

from services import logs
from services.api import idempotency
from services.api.executor import JobExecutor
from services.api.webhooks import job_webhook
from services.api.http import read_json, send_json
from services.comfy.client import ComfyClient
from services.errors import AppError
from services.jobs import job_id as job_id_rule
from services.jobs.runner import JobRunner
from services.net.policy import FetchPolicy
from services.security.envelope import OpenedPayload, open_payload
from services.security.replay import check_fresh, replayed
from services.store.envelopes import EnvelopeLedger
from services.store.jobs import JobStore, QueueFull
from services.store.states import JOB_TERMINAL, JobState

log = logs.get("api.jobs")

_META = ("async", "job_id")
SYNC_POLL_SECONDS = 0.5
EVENTS_POLL_SECONDS = 0.25
PING_SECONDS = 15.0
# A job takes seconds to minutes: a few seconds lets a slot free up without refused clients
# hammering the Pod meanwhile.
RETRY_AFTER_SECONDS = 5


def _job_id(value: Any) -> str | None:
    return None if value is None else job_id_rule.checked(value)


class RunResource:
    def __init__(self, settings, runner: JobRunner, executor: JobExecutor, store: JobStore):
        self.settings, self.runner, self.executor, self.store = settings, runner, executor, store
        self.ledger = EnvelopeLedger(store.db, settings.envelope_max_age)
        self.policy = FetchPolicy.from_settings(settings)  # where a job's webhook_url may point

    async def on_post(self, req, resp) -> None:
        try:
            await self._post(req, resp)
        except QueueFull as exc:
            # Not sealed, even for an envelope: like a replay refusal it holds nothing of the
            # payload, and whoever balances the load must read it.
            log.info("run_refused", error=exc.code, active=exc.active, limit=exc.limit)
            resp.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
            send_json(resp, exc.as_dict(), exc.status)

    async def _post(self, req, resp) -> None:
        key = idempotency.parse_key(req.get_header(idempotency.HEADER))
        body = await read_json(req)
        if not isinstance(body, dict):
            raise AppError("invalid_payload", "the body must be a JSON object", suffix="body")
        is_async = body.get("async", False)
        if not isinstance(is_async, bool):
            raise AppError("invalid_payload", "async must be true or false", suffix="async")
        job_id = idempotency.resolve_job_id(key, _job_id(body.get("job_id")))
        payload = {k: v for k, v in body.items() if k not in _META}
        request_sha256 = idempotency.request_sha256(payload)
        if key is not None:  # before an envelope is spent or anything validated
            idempotency.check_same(await asyncio.to_thread(self.store.get, job_id), request_sha256)
        opened = open_payload(payload, self.settings)
        if opened.encrypted:
            job_id = await self._accept_once(opened, job_id)
        try:
            request, _spec, _workflow = self.runner.validate(opened.payload, opened.encrypted)
            webhook = await job_webhook(self.settings, self.policy, request.webhook_url, opened.encrypted)
        except AppError as exc:
            send_json(resp, opened.error(exc), exc.status)
            return

        if is_async:
            job = await self.executor.enqueue(payload, job_id, webhook=webhook, request_sha256=request_sha256)
            if key is not None:  # another request with this key may have stored its job meanwhile
                idempotency.check_same(job, request_sha256)
            resp.set_header("Location", f"/jobs/{job.id}")
            send_json(resp, {"job_id": job.id, "state": job.state}, 202)
            return
        job, task = await self.executor.run_now(payload, job_id, webhook=webhook, request_sha256=request_sha256)
        if key is not None:
            idempotency.check_same(job, request_sha256)
        if task is None:
            send_json(resp, await self._wait_elsewhere(job.id))
            return
        try:
            # Shielded: a client that hangs up does not cancel the job; it stays durable.
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            outcome = {"status": 409, "body": {"error": "cancelled", "detail": "cancelled while running",
                                               "job_id": job.id}}
        send_json(resp, outcome["body"], outcome["status"])

    async def _accept_once(self, opened: OpenedPayload, job_id: str | None) -> str:
        """Refuse a stale or replayed envelope; returns the job id the envelope runs as."""
        check_fresh(opened, self.settings.envelope_max_age)
        # Before the envelope is spent, so that once there is room the client may send it again
        # (should another request take the last slot in between, only a job_id brings it back).
        await asyncio.to_thread(self.store.check_room, self.settings.queue_max_jobs, job_id)
        wanted = job_id or uuid.uuid4().hex  # without a job_id of its own, any second use is a replay
        if await asyncio.to_thread(self.ledger.claim, opened.replay_key, wanted) != wanted:
            raise replayed()
        return wanted

    async def _wait_elsewhere(self, job_id: str) -> dict[str, Any]:
        """A retried request whose job another worker owns: wait for the row to finish."""
        while True:
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is None or job.state in JOB_TERMINAL:
                return job.public() if job else {"job_id": job_id}
            await asyncio.sleep(SYNC_POLL_SECONDS)


class JobResource:
    def __init__(self, store: JobStore, executor: JobExecutor, comfy: dict[int, ComfyClient]):
        self.store, self.executor, self.comfy = store, executor, comfy  # comfy: a client per backend

    async def _get(self, job_id: str):
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None:
            raise AppError("not_found", f"no job {job_id}")
        return job

    async def on_get(self, req, resp, job_id: str) -> None:
        job = await self._get(job_id)
        view = job.public()
        live = self.executor.board.read(job.id) if job.state == JobState.RUNNING else None
        if live is not None:
            view["progress"] = live["percent"]  # fresher than the last heartbeat, whoever runs it
        send_json(resp, view)

    async def on_delete(self, req, resp, job_id: str) -> None:
        job = await self._get(job_id)
        if job.state in JOB_TERMINAL:
            send_json(resp, job.public())
            return
        job = await asyncio.to_thread(self.store.request_cancel, job_id)
        local = self.executor.tasks.get(job_id)
        if local is not None:
            local.cancel()
        elif job.state == JobState.RUNNING and job.prompt_id:
            # Another worker owns it: interrupt its ComfyUI now; its heartbeat sees the flag soon.
            await self.comfy.get(job.backend or 0, self.comfy[0]).cancel(job.prompt_id)
        send_json(resp, job.public(), 202)


class JobEventsResource:
    """`GET /jobs/{id}/events`: the job as server-sent events, whichever worker runs it.

    `state` on every change (queued, running, ...), `progress` ({percent, node, step, steps}) while
    it runs, and `done` with the job's final view (as `GET /jobs/{id}`) before the stream ends.
    Read from the store and the progress board every EVENTS_POLL_SECONDS; a comment line every
    PING_SECONDS keeps idle proxies from closing the stream.
    """

    def __init__(self, store: JobStore, executor: JobExecutor):
        self.store, self.executor = store, executor

    async def on_get(self, req, resp, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get, job_id)
        if job is None:
            raise AppError("not_found", f"no job {job_id}")  # a 404 before the stream starts
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("X-Accel-Buffering", "no")  # proxies must pass events on at once
        resp.sse = self._events(job)

    async def _events(self, job):
        state, progress, sequence, quiet_since = None, None, 0, time.monotonic()
        while True:
            event = None
            if job.state != state:
                state = job.state
                event = SSEvent(event="state", json={"job_id": job.id, "state": state,
                                                      "comfy_attempts": job.comfy_attempts})
            elif state == JobState.RUNNING:
                live = self.executor.board.read(job.id)
                if live is not None and live != progress:
                    progress = live
                    event = SSEvent(event="progress", json={"job_id": job.id, **live})
            if event is not None:
                sequence += 1
                event.event_id = str(sequence)
                quiet_since = time.monotonic()
                yield event
            elif time.monotonic() - quiet_since > PING_SECONDS:
                quiet_since = time.monotonic()
                yield None  # Falcon sends a `: ping` comment
            if state in JOB_TERMINAL:
                yield SSEvent(event="done", json=job.public(), event_id=str(sequence + 1))
                return
            if event is None:
                await asyncio.sleep(EVENTS_POLL_SECONDS)
            job = await asyncio.to_thread(self.store.get, job.id) or job


class JobsResource:
    def __init__(self, store: JobStore):
        self.store = store

    async def on_get(self, req, resp) -> None:
        state = req.get_param("state")
        if state is not None and state not in set(JobState):
            raise AppError("invalid_payload", f"state is one of {', '.join(JobState)}", suffix="state")
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=100)
        jobs = await asyncio.to_thread(self.store.list, state, limit)
        send_json(resp, {"jobs": [{k: v for k, v in j.public().items() if k != "result"} for j in jobs],
                         "counts": await asyncio.to_thread(self.store.counts)})


def route(app: falcon.asgi.App, settings, runner, executor, store, comfy) -> None:
    app.add_route("/run", RunResource(settings, runner, executor, store))
    app.add_route("/jobs", JobsResource(store))
    app.add_route("/jobs/{job_id}", JobResource(store, executor, comfy))
    app.add_route("/jobs/{job_id}/events", JobEventsResource(store, executor))
