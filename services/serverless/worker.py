"""The serverless worker: ComfyUI and the job runner on a private event loop, and what a
RunPod job turns into.

The appliance's async work runs on one loop in a background thread that the worker owns from
its first millisecond, so ComfyUI starts warming up before the RunPod SDK has even finished
importing, and nothing depends on which loop (if any) the SDK calls the handler from.
A failed start never kills the worker: the job that needed ComfyUI gets
`comfy_init_failed:<reason>`, and the next job tries again. When ComfyUI or the GPU looks
broken beyond repair the result asks RunPod to replace this worker (`refresh_worker`). Once a
shutdown begins (SIGTERM, see services/serverless/signals.py) jobs get `SHUTDOWN_GRACE` seconds
more, then are interrupted and answer `worker_shutdown`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import uuid
from typing import Any, Callable, Coroutine

from services import logs
from services.comfy.client import Progress
from services.comfy.launcher import json_line_sink
from services.comfy.startup_log import StartupLog
from services.errors import AppError
from services.gpu import state as gpu_state
from services.jobs import job_id as job_id_rule
from services.jobs.runner import JobRunner
from services.security.envelope import OpenedPayload, open_payload
from services.security.replay import ReplayCache
from services.startup_ledger import Ledger
from services.versions.spec import SpecStore
from services.comfy.versioned import VersionedComfy

log = logs.get("serverless")

# Codes that may mean a broken worker, or a bad moment: replace it when they repeat or nvidia-smi
# agrees (the catalogue's fatal codes need no second look, see _failure).
_BROKEN = ("comfy_crashed", "comfy_init_failed", "comfy_unreachable")
FAILURES_BEFORE_REFRESH = 2
PROGRESS_EVERY_SECONDS = 1.0


class Worker:
    broken_by: AppError | None = None  # the fatal error that ended this worker's usefulness (_failure)

    def __init__(self, settings, send_progress: Callable[[dict, dict], None] | None = None,
                 startup: Ledger | None = None):
        self.settings = settings
        self.send_progress = send_progress
        # The start-up ledger, in memory: the first answer carries it (see handle).
        self.startup = startup or Ledger("serverless")
        self._startup_due = True
        self.specs = SpecStore(settings.versions_dir)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="appliance-loop", daemon=True).start()
        self.provider = VersionedComfy(settings, line_sink=self._comfy_line_sink())
        self.runner = JobRunner(settings, self.specs, self.provider)
        self.replays = ReplayCache(settings.envelope_max_age)
        self.broken_in_a_row = 0
        self._shutdown_at: float | None = None  # loop time at which running jobs are interrupted
        self._job_timeouts: set[asyncio.Timeout] = set()

    def _comfy_line_sink(self) -> Callable[[str], None]:
        """ComfyUI's lines: read for the start-up ledger, then logged (unless LOG_SILENT)."""
        comfy_log, logged = StartupLog(), None if self.settings.log_silent else json_line_sink()

        def sink(line: str) -> None:
            for stage, fields in comfy_log.feed(line):
                self.startup.mark(stage, **fields)
            if logged:
                logged(line)

        return sink

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    # ---- start-up -------------------------------------------------------------------------
    def warm_up(self) -> concurrent.futures.Future | None:
        """Start ComfyUI for the default version in the background (never with DRY_RUN)."""
        if self.settings.dry_run:
            return None
        version_id = self.settings.default_version_id
        if not version_id and self.settings.is_set("comfy_home"):
            # Developer mode runs COMFY_HOME whatever the version: any spec names it.
            version_id = next(iter(self.specs.ids()), "")
        if not version_id:
            return None  # nothing to warm: the first job's version decides
        return self.submit(self._warm(version_id))

    async def _warm(self, version_id: str) -> None:
        started = time.monotonic()
        self.startup.mark("comfy_starting")
        try:
            client = await self.provider.client_for(self.specs.load(version_id))
        except AppError as exc:
            log.error("warm_up_failed", version_id=version_id, error=exc.code)
            return
        self.startup.mark("comfy_answering")
        self.provider.release(client)
        log.info("warm_up_done", version_id=version_id, seconds=round(time.monotonic() - started, 2))

    # ---- shutdown -------------------------------------------------------------------------
    def begin_shutdown(self, reason: str) -> None:
        """Give running and later jobs `SHUTDOWN_GRACE` seconds from now. Safe from any thread
        and from a signal handler; only the first call counts."""
        self.loop.call_soon_threadsafe(self._begin_shutdown, reason)

    def _begin_shutdown(self, reason: str) -> None:
        if self._shutdown_at is not None:
            return
        grace = self.settings.shutdown_grace
        self._shutdown_at = self.loop.time() + grace
        for timeout in self._job_timeouts:
            timeout.reschedule(self._shutdown_at)
        log.info("shutdown_begun", reason=reason, grace=grace, running_jobs=len(self._job_timeouts))

    @contextlib.asynccontextmanager
    async def _until_shutdown(self, job_id: str):
        """No limit until a shutdown begins, then its grace. Expiry cancels the job's task, which
        interrupts the prompt in ComfyUI like a RunPod cancel does (services/jobs/runner.py)."""
        timeout = asyncio.timeout_at(self._shutdown_at)
        self._job_timeouts.add(timeout)
        try:
            async with timeout:
                yield
        except TimeoutError:
            if not timeout.expired():
                raise
            log.warning("job_interrupted_by_shutdown", job_id=job_id)
            raise AppError("worker_shutdown", f"the worker is stopping; the job was interrupted after the "
                                              f"{self.settings.shutdown_grace:g} s grace") from None
        finally:
            self._job_timeouts.discard(timeout)

    def shutdown(self, timeout: float = 15.0) -> None:
        try:
            self.submit(self._close()).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("shutdown_timeout")
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _close(self) -> None:
        # What still runs ends first (a warm-up, when the signal came during start-up): a task
        # left pending when the loop stops would only be destroyed, noisily, at exit.
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self.runner.close()
        await self.provider.close()

    # ---- one job --------------------------------------------------------------------------
    async def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """RunPod job -> result dict, never an exception (RunPod would ship its traceback).
        The first answer of this process (and the first after a FlashBoot restore) carries the
        start-up ledger as `startup`: sealed inside an encrypted result, in clear beside a plain
        error; an encrypted error cannot carry it, and the next answer does."""
        if self.startup.check_restored():
            self.startup.mark("restored")
            self._startup_due = True
        self.startup.mark("first_job_received")
        answer = await self._handle(job)
        if self._startup_due and not answer.get("encrypted"):
            answer = {**answer, "startup": self._startup_report()}
        return answer

    def _with_startup(self, result: dict[str, Any]) -> dict[str, Any]:
        return {**result, "startup": self._startup_report()} if self._startup_due else result

    def _startup_report(self) -> dict[str, Any]:
        self._startup_due = False
        self.startup.mark("restored_job_done" if self.startup.data["restored"] else "first_job_done")
        report = self.startup.snapshot()
        log.info("startup", **report)
        return report

    async def _handle(self, job: dict[str, Any]) -> dict[str, Any]:
        job_id = job["id"] if job_id_rule.is_job_id(job.get("id")) else uuid.uuid4().hex
        opened = OpenedPayload(None, None)  # until the envelope is open, errors carry no payload
        if self.broken_by is not None:
            # A fatal error (a sticky CUDA fault) left this worker unable to run any job: refuse at
            # once, before the payload is opened, until RunPod replaces the worker. Only the fixed
            # `fault` name travels, nothing of the job that met it.
            fault = self.broken_by.extra.get("fault")
            return self._failure(AppError(self.broken_by.prefix, f"an earlier job on this worker failed with "
                                          f"{self.broken_by.prefix} ({fault}); it runs no more jobs",
                                          extra={"fault": fault}), opened)
        try:
            opened = open_payload(job.get("input"), self.settings)
            self.replays.accept(opened)
            if isinstance(opened.payload, dict) and opened.payload.get("webhook_url") is not None:
                # Pod mode's signed webhooks; refused rather than silently never called.
                raise AppError("invalid_payload", "webhook_url is a Pod mode field; on RunPod serverless give "
                               "the request its own `webhook` (RunPod calls it)", suffix="webhook_url")
            async with self._until_shutdown(job_id):
                result = await self.runner.run(opened.payload, job_id=job_id, on_progress=self._progress(job),
                                               encrypted=opened.encrypted)
        except AppError as exc:
            return self._failure(exc, opened)
        except Exception as exc:  # a bug must still answer with a code, and keep the worker
            log.error("handler_bug", exc_info=True, job_id=job_id)
            return {"error": f"internal_error: {type(exc).__name__}"}
        self.broken_in_a_row = 0
        return opened.reply(self._with_startup(result))

    def _failure(self, exc: AppError, opened: OpenedPayload) -> dict[str, Any]:
        # RunPod keeps only `error` of a failed job: code and detail travel in that one string;
        # the rest (node_errors, detail) stays in `output` for the workers that read it. For an
        # encrypted job the string is the bare code and everything else is sealed in `output`.
        answer = opened.error(exc) if opened.encrypted else {**exc.as_dict(), "error": exc.one_line()}
        if exc.fatal:
            # The catalogue's fatal codes (gpu_fault: the CUDA context is corrupt until the process
            # ends) break the worker at the first occurrence: replace it now, refuse jobs till then.
            self.broken_by = self.broken_by or exc
            log.error("refresh_worker", error=exc.code, fault=exc.extra.get("fault"))
            answer["refresh_worker"] = True
        elif exc.prefix in _BROKEN:
            self.broken_in_a_row += 1
            gpu = gpu_state.probe(self.settings.nvidia_smi, self.settings.gpu_probe_timeout, [])
            if gpu["state"] in ("degraded", "unknown") or self.broken_in_a_row >= FAILURES_BEFORE_REFRESH:
                log.error("refresh_worker", error=exc.code, gpu=gpu["state"], failures=self.broken_in_a_row)
                answer["refresh_worker"] = True
        elif exc.status < 500:
            self.broken_in_a_row = 0
        return answer

    def _progress(self, job: dict[str, Any]):
        if self.send_progress is None:
            return None
        last = {"at": 0.0}

        def report(progress: Progress) -> None:
            now = time.monotonic()
            if now - last["at"] >= PROGRESS_EVERY_SECONDS:
                last["at"] = now
                self.send_progress(job, {"percent": progress.percent, "node": progress.node})

        return report
