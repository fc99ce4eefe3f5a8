"""Signed webhooks in the Pod API: which jobs get one, and the loop that delivers them.

At `/run`: a job's webhook is its own `webhook_url`, else `WEBHOOK_URL`, else none. Its own URL
is checked against the fetch policy before anything is stored (400 `url_forbidden:<why>`), and
without `WEBHOOK_SECRET` a job that asks for one is refused (`webhooks_unavailable`): an
unsigned webhook could be forged by anyone who learns the receiver's URL, so none is ever sent.
The job row keeps where the webhook goes: the URL, or `sealed` when the URL came inside an
encrypted payload (nothing of an envelope is stored in clear; the stored envelope is opened
again to read it at delivery).

Delivery: every API worker runs a `WebhookDispatcher`, which claims due rows of the store's
`webhooks` table (leases: one worker per row, taken over when its worker dies) and sends each
(services/webhooks/sender.py), up to DELIVERY_CONCURRENCY at once. A failed attempt that may
succeed later is put back with its back-off; every attempt is logged (URL without its query,
never the secret; a sealed URL is not logged at all).
"""
from __future__ import annotations

import asyncio
import json
import socket

from services import logs
from services.errors import AppError
from services.net.aio import guarded_session
from services.net.policy import FetchPolicy
from services.net.target import public_url
from services.security.envelope import open_payload
from services.store.db import Database
from services.store.jobs import JobStore
from services.store.webhooks import Webhook, WebhookStore
from services.webhooks import message, sender, signing

log = logs.get("api.webhooks")

SEALED = "sealed"
POLL_SECONDS = 0.5
DELIVERY_CONCURRENCY = 8


def _check_url(policy: FetchPolicy, url: str) -> None:
    target = policy.target(url)
    if target.address is None:
        try:
            policy.addresses(target.host, target.port)
        except socket.gaierror:
            pass  # a passing DNS failure: the name is checked again when it is delivered to


async def job_webhook(settings, policy: FetchPolicy, own_url: str | None, encrypted: bool) -> str | None:
    """What the job row records as its webhook; raises AppError when the job must be refused."""
    if own_url is None and not settings.webhook_url:
        return None
    if not settings.webhook_secret:
        raise AppError("webhooks_unavailable", "this Pod has no WEBHOOK_SECRET to sign webhooks with")
    if own_url is None:
        return settings.webhook_url
    await asyncio.to_thread(_check_url, policy, own_url)  # an empty string is url_forbidden:invalid
    return SEALED if encrypted else own_url


class WebhookDispatcher:
    """Claims and delivers webhooks in one API worker (a Lifespan part: start/stop)."""

    def __init__(self, settings, db: Database, jobs: JobStore, owner: str):
        self.settings, self.jobs, self.owner = settings, jobs, owner
        # A lease outlives any attempt (each is cut at WEBHOOK_TIMEOUT): only a dead worker's expires.
        self.store = WebhookStore(db, lease=settings.webhook_timeout + 30, max_attempts=settings.webhook_attempts)
        self.policy = FetchPolicy.from_settings(settings)
        self.key = signing.key_bytes(settings.webhook_secret) if settings.webhook_secret else None
        self.tasks: set[asyncio.Task] = set()
        self._loop: asyncio.Task | None = None
        self._session = None

    def start(self) -> None:
        self._session = guarded_session(self.policy)
        self._loop = asyncio.get_running_loop().create_task(self._claim_loop())

    async def stop(self) -> None:
        for task in [self._loop, *self.tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._loop, *self.tasks] if t is not None], return_exceptions=True)
        await asyncio.to_thread(self.store.release, self.owner)  # the next worker retries them at once
        if self._session is not None:
            await self._session.close()

    async def _claim_loop(self) -> None:
        while True:
            try:
                if len(self.tasks) < DELIVERY_CONCURRENCY:
                    row = await asyncio.to_thread(self.store.claim, self.owner)
                    if row is not None:
                        task = asyncio.get_running_loop().create_task(self._deliver(row))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                        continue
                await asyncio.sleep(POLL_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception:  # a locked or vanished database must not kill the loop
                log.error("webhook_claim_failed", exc_info=True)
                await asyncio.sleep(1)

    async def _deliver(self, row: Webhook) -> None:
        shown = None
        try:
            job = await asyncio.to_thread(self.jobs.get, row.job_id)
            if job is None:
                outcome = sender.Outcome(False, False, None, "job_gone")
            elif self.key is None:  # WEBHOOK_SECRET was removed since the job was accepted
                outcome = sender.Outcome(False, False, None, "no_webhook_secret")
            else:
                url, shown = self._url(job.webhook, job.payload)
                body = message.build(job, self.settings.webhook_max_bytes)
                outcome = await sender.post(self._session, self.policy, url, row.id, body, self.key,
                                            self.settings.webhook_timeout)
        except AppError as exc:  # the sealed payload no longer opens (the key changed)
            shown, outcome = SEALED, sender.Outcome(False, False, None, exc.prefix)
        except Exception:  # a bug: give up this webhook once rather than loop on it
            log.error("webhook_failed_by_bug", exc_info=True, webhook_id=row.id, job_id=row.job_id)
            outcome = sender.Outcome(False, False, None, "internal_error")
        await asyncio.to_thread(self._record, row, outcome, shown)

    def _url(self, webhook: str, payload: str) -> tuple[str, str]:
        """The URL to call, and how it may be logged."""
        if webhook != SEALED:
            return webhook, public_url(webhook)
        opened = open_payload(json.loads(payload), self.settings)
        return opened.payload["webhook_url"], SEALED

    def _record(self, row: Webhook, outcome: sender.Outcome, shown: str | None) -> None:
        fields = dict(webhook_id=row.id, job_id=row.job_id, attempt=row.attempts, url=shown,
                      status=outcome.status, error=outcome.error)
        if outcome.delivered:
            self.store.delivered(self.owner, row.id, outcome.status)
            log.info("webhook_delivered", **fields)
        elif outcome.retry and row.attempts < self.settings.webhook_attempts:
            delay = max(sender.backoff(row.attempts, self.settings.webhook_retry_base), outcome.retry_after)
            self.store.retry(self.owner, row.id, delay, outcome.status, outcome.error)
            log.warning("webhook_retry", next_in_s=round(delay, 3), **fields)
        else:
            self.store.give_up(self.owner, row.id, outcome.status, outcome.error)
            log.error("webhook_given_up", **fields)
