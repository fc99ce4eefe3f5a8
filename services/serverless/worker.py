"""The serverless worker: ComfyUI and the job runner on a private event loop, and what a
RunPod job turns into.

The appliance's async work runs on one loop in a background thread that the worker owns from
its first millisecond, so ComfyUI starts warming up before the RunPod SDK has even finished
importing, and nothing depends on which loop (if any) the SDK calls the handler from.
A failed start never kills the worker: the job that needed ComfyUI gets
`comfy_init_failed:<reason>`, and the next job tries again. When ComfyUI or the GPU looks
broken beyond repair the result asks RunPod to replace this worker (`refresh_worker`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
import time
import uuid
from typing import Any, Callable, Coroutine

from services import logs
from services.comfy.client import Progress
from services.comfy.launcher import json_line_sink
from services.errors import AppError
from services.gpu import state as gpu_state
from services.jobs.runner import JobRunner
from services.security.envelope import OpenedPayload, open_payload
from services.security.replay import ReplayCache
from services.versions.spec import SpecStore
from services.comfy.versioned import VersionedComfy

log = logs.get("serverless")

_JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BROKEN = ("comfy_crashed", "comfy_init_failed", "comfy_unreachable")
FAILURES_BEFORE_REFRESH = 2
PROGRESS_EVERY_SECONDS = 1.0


class Worker:
    def __init__(self, settings, send_progress: Callable[[dict, dict], None] | None = None):
        self.settings = settings
        self.send_progress = send_progress
        self.specs = SpecStore(settings.versions_dir)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="appliance-loop", daemon=True).start()
        self.provider = VersionedComfy(settings, line_sink=None if settings.log_silent else json_line_sink())
        self.runner = JobRunner(settings, self.specs, self.provider)
        self.replays = ReplayCache(settings.envelope_max_age)
        self.broken_in_a_row = 0

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
        try:
            await self.provider.client_for(self.specs.load(version_id))
        except AppError as exc:
            log.error("warm_up_failed", version_id=version_id, error=exc.code)
            return
        self.provider.release()
        log.info("warm_up_done", version_id=version_id, seconds=round(time.monotonic() - started, 2))

    def shutdown(self, timeout: float = 15.0) -> None:
        try:
            self.submit(self._close()).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("shutdown_timeout")
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _close(self) -> None:
        await self.runner.close()
        await self.provider.close()

    # ---- one job --------------------------------------------------------------------------
    async def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """RunPod job -> result dict, never an exception (RunPod would ship its traceback)."""
        job_id = job.get("id") if isinstance(job.get("id"), str) and _JOB_ID_RE.fullmatch(job["id"]) else uuid.uuid4().hex
        opened = OpenedPayload(None, None)  # until the envelope is open, errors carry no payload
        try:
            opened = open_payload(job.get("input"), self.settings)
            self.replays.accept(opened)
            result = await self.runner.run(opened.payload, job_id=job_id, on_progress=self._progress(job))
        except AppError as exc:
            return self._failure(exc, opened)
        except Exception as exc:  # a bug must still answer with a code, and keep the worker
            log.error("handler_bug", exc_info=True, job_id=job_id)
            return {"error": f"internal_error: {type(exc).__name__}"}
        self.broken_in_a_row = 0
        return opened.reply(result)

    def _failure(self, exc: AppError, opened: OpenedPayload) -> dict[str, Any]:
        # RunPod keeps only `error` of a failed job: code and detail travel in that one string;
        # the rest (node_errors, detail) stays in `output` for the workers that read it. For an
        # encrypted job the string is the bare code and everything else is sealed in `output`.
        answer = opened.error(exc) if opened.encrypted else {**exc.as_dict(), "error": exc.one_line()}
        if exc.prefix in _BROKEN:
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
