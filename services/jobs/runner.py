"""The job runner: one job = version + workflow + output mode, from payload to delivered result.

validate -> (dry run ends here) -> ComfyUI ready -> pre-flight (nodes, models) -> check file inputs ->
upload inputs -> submit -> wait (timeout, cancel, stall watchdog) -> collect outputs -> deliver ->
remove the job's files. Pod API, serverless handler and CLI all run jobs through this one class; what differs
between them is the `ComfyProvider` (who owns ComfyUI).

ComfyUI restarts are routine on GPUs (a crashing node, a driver fault, the stall watchdog): the
provider makes a job wait while ComfyUI comes back, and a job whose prompt died with ComfyUI
is submitted again, up to `JOB_MAX_ATTEMPTS` attempts in all, so only a job that brings
ComfyUI down every time fails (and the next job, after one more restart, runs).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from typing import Any, Awaitable, Callable

import aiohttp

from services import logs
from services.comfy.client import ComfyClient, ProgressCallback
from services.comfy.provider import ComfyProvider
from services.errors import AppError
from services.jobs.delivery import Deliverer
from services.jobs.fetch import FetchFailed, fetch_bytes
from services.jobs.file_inputs import JOBS_FOLDER, FileInputs, check_file_inputs
from services.jobs import job_id as job_id_rule
from services.jobs import preflight, provenance
from services.jobs.job_files import JobFiles
from services.jobs.parameters import customize
from services.jobs.job_models import fetch_job_models
from services.jobs.request import InputImage, JobRequest, parse_request
from services.jobs.workflow import UiWorkflow, fetch_workflow, isolate_outputs, parse_workflow, rewrite_input_names
from services.net.aio import guarded_session
from services.outputs import registry
from services.models.usage import InUse
from services.versions.models import check_models
from services.versions.spec import SpecStore, VersionSpec

log = logs.get("jobs.runner")

MAX_INPUT_IMAGE_BYTES = 64 * 2**20
# The prompt died with ComfyUI, or ComfyUI went away before it was queued: another attempt may
# succeed once ComfyUI is back. A gpu_fault is not among them: the GPU, not the job, is broken.
RETRYABLE = ("comfy_crashed", "comfy_stalled", "comfy_unreachable")


class Stopwatch:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = round((now - self._last) * 1000, 2)
        self._last = now


class JobRunner:
    def __init__(self, settings, specs: SpecStore, provider: ComfyProvider):
        self.settings = settings
        self.specs = specs
        self.provider = provider
        self.deliverer = Deliverer(settings)
        self.files = JobFiles.from_settings(settings)
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = guarded_session(self.settings)  # URL fetches obey the fetch policy (services/net)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def validate(self, payload: Any, encrypted: bool = False) -> tuple[JobRequest, VersionSpec, dict[str, Any] | None]:
        """The checks that need no network: payload, version spec, an inline or the default workflow
        with the job's params and overrides written in (None: workflow_url, fetched by `prepare`). `encrypted`:
        the payload came sealed (it may then carry storage credentials: services/jobs/request.py)."""
        request = parse_request(payload, self.settings, encrypted)
        spec = self.specs.load(request.version_id)
        workflow = parse_workflow(request.workflow) if request.workflow is not None else None
        if workflow is None and request.workflow_url is None:
            if spec.workflow is None:
                raise AppError("missing_workflow", f"send workflow or workflow_url (version {spec.id} has no default)")
            workflow = parse_workflow(spec.workflow)
        return request, spec, self._customize(request, spec, workflow) if workflow is not None else None

    def _customize(self, request: JobRequest, spec: VersionSpec, workflow: dict[str, Any] | UiWorkflow):
        """The job's `params` and `overrides` written into (a copy of) its workflow; into an editor
        workflow once `_execute` has converted it (they name the API prompt's nodes and inputs)."""
        if isinstance(workflow, UiWorkflow):
            return workflow
        return customize(workflow, request.params, request.overrides, spec.parameters, spec.id)

    async def prepare(self, payload: Any, encrypted: bool = False) -> tuple[JobRequest, VersionSpec, dict[str, Any]]:
        """Everything that can fail on bad input, before any ComfyUI work."""
        request, spec, workflow = self.validate(payload, encrypted)
        if workflow is None:  # only a workflow_url is left to fetch (overrides are checked against it then)
            workflow = self._customize(request, spec, await fetch_workflow(
                request.workflow_url, max_bytes=self.settings.workflow_url_max_bytes,
                timeout=self.settings.workflow_url_timeout, session=self._session()))
        return request, spec, workflow

    async def run(self, payload: Any, *, job_id: str | None = None,
                  on_progress: ProgressCallback | None = None,
                  on_submitted: Callable[[str, int | None], Awaitable[None] | None] | None = None,
                  resume_prompt_id: str | None = None, resume_backend: int | None = None, attempts: int = 0,
                  on_attempt: Callable[[int], Awaitable[None] | None] | None = None,
                  encrypted: bool = False) -> dict[str, Any]:
        """Run one job. `resume_prompt_id`: the job's prompt was submitted (to ComfyUI backend
        `resume_backend`) by a worker that died; wait on it if ComfyUI still has it, else submit
        the job again. `on_submitted(prompt_id, backend)` is told where each attempt went. `attempts`: how often the
        job was handed to ComfyUI before (stored with a Pod job); `on_attempt(n)` is told each new one.
        `encrypted`: the payload came sealed (see `validate`)."""
        watch = Stopwatch()
        job_id = job_id or uuid.uuid4().hex
        job_id_rule.checked(job_id)
        request, spec, workflow = await self.prepare(payload, encrypted)
        watch.lap("validate")
        if self.settings.dry_run:
            return {"job_id": job_id, "version_id": spec.id, "dry_run": True, "outputs": []}
        # The cache budget must not evict the version's models from before they are verified to
        # the job's end (services/models/usage.py); the models the job brings too.
        with InUse(self.settings, (*spec.models, *request.models)):
            await self._models_present(spec)
            await fetch_job_models(request.models, self.settings, job_id)  # the job's own, never replacing a file
            watch.lap("models")

            while True:
                # Waits while ComfyUI (re)starts; an adopted prompt is asked of the backend that has it.
                comfy = await self.provider.client_for(spec, resume_backend if resume_prompt_id else None)
                in_use = self.provider.version_of(comfy)  # read while the job holds ComfyUI: no switch can interleave
                watch.lap("comfy_ready")
                if resume_prompt_id is None:  # adopting a dead worker's prompt is no new attempt
                    attempts += 1
                    await _call(on_attempt, attempts)
                try:
                    result = await self._execute(comfy, request, spec, workflow, job_id, watch, on_progress,
                                                 on_submitted, resume_prompt_id)
                    break
                except AppError as exc:
                    if exc.prefix in RETRYABLE and attempts < self.settings.job_max_attempts:
                        log.warning("job_retry", job_id=job_id, error=exc.code, attempt=attempts,
                                    max_attempts=self.settings.job_max_attempts)
                        resume_prompt_id = None
                        continue
                    exc.extra.setdefault("comfy_version", in_use)
                    if attempts > 1:
                        exc.extra.setdefault("attempts", attempts)
                    raise
                finally:
                    self.provider.release(comfy)
        if not self.settings.no_history:
            result["comfy_version"] = in_use
        return result

    async def _execute(self, comfy: ComfyClient, request: JobRequest, spec: VersionSpec, workflow: dict[str, Any],
                       job_id: str, watch: Stopwatch, on_progress: ProgressCallback | None,
                       on_submitted: Callable[[str, int | None], Awaitable[None] | None] | None,
                       resume_prompt_id: str | None) -> dict[str, Any]:
        if isinstance(workflow, UiWorkflow):  # the editor's format: what it means depends on this ComfyUI's nodes
            workflow = self._customize(request, spec, workflow.to_prompt(await comfy.object_info_once()))
        prompt = isolate_outputs(workflow, job_id)
        self.files.prepare(job_id, uploads=bool(request.images))
        try:
            return await self._run_prompt(comfy, request, spec, prompt, job_id, watch, on_progress, on_submitted,
                                          resume_prompt_id, workflow)
        finally:
            # Shielded: a cancelled job's files must go too.
            await asyncio.shield(self.files.release(job_id))

    async def _run_prompt(self, comfy: ComfyClient, request: JobRequest, spec: VersionSpec, prompt: dict[str, Any],
                          job_id: str, watch: Stopwatch, on_progress: ProgressCallback | None,
                          on_submitted: Callable[[str, int | None], Awaitable[None] | None] | None,
                          resume_prompt_id: str | None, workflow: dict[str, Any]) -> dict[str, Any]:
        """`workflow` is the job's workflow before `prompt` was made from it (the provenance's hash)."""
        outcome = None
        if resume_prompt_id:
            prompt_id = resume_prompt_id
            outcome = await self._adopt(comfy, prompt_id, prompt, request.timeout, on_progress)
        if outcome is None:
            # Before anything is uploaded or submitted: every node and model exists (all problems in
            # one answer), and a job may only read its own files.
            info = await comfy.object_info_once()
            await preflight.check(comfy, prompt, info, (*spec.models, *request.models))
            check_file_inputs(prompt, FileInputs.from_object_info(info), {image.name for image in request.images})
            rewrite_input_names(prompt, await self._upload_images(comfy, request.images, job_id))
            if request.images:  # what ComfyUI wrote with its umask; before that its folders are empty
                await asyncio.to_thread(self.files.protect, job_id)
            prompt_id = await comfy.submit(prompt)
            watch.lap("submit")
            log.info("job_submitted", job_id=job_id, prompt_id=prompt_id, version_id=spec.id)
            await _call(on_submitted, prompt_id, self.provider.backend_of(comfy))
            outcome = await self._wait(comfy, prompt_id, prompt, request.timeout, on_progress,
                                       stall_timeout=self._stall_timeout(spec))
        watch.lap("execute")

        if self.settings.no_history:
            await self._forget(comfy, prompt_id)
            return {"prompt_id": prompt_id}
        origin = await asyncio.to_thread(provenance.build, spec, self.settings, workflow,
                                         self.provider.version_of(comfy))
        outputs = await self.deliverer.deliver(comfy, outcome, request, job_id,
                                               provenance.OutputStamp.of(origin, prompt, outcome, self.settings))
        watch.lap("deliver")
        if not outputs:
            raise AppError("no_outputs", "the workflow saved no file; add a save node (SaveImage, SaveVideo, ...)",
                           extra={"prompt_id": prompt_id})
        result: dict[str, Any] = {"job_id": job_id, "prompt_id": prompt_id, "version_id": spec.id,
                                  "outputs": outputs}
        first = next((o for o in outputs if "filename" in o), None)
        if first is not None:
            # The seeds' single-output shape: {"base64"|"gcs_url", "size", ...} of the first file.
            for key in registry.result_fields():
                if key in first:
                    result[key] = first[key]
            result["size"] = first["size"]
        result["timings_ms"] = watch.marks
        result["provenance"] = origin
        if request.verbose:
            result["cached_nodes"] = outcome.cached_nodes
        log.info("job_done", job_id=job_id, prompt_id=prompt_id, outputs=len(outputs), **watch.marks)
        return result

    async def _models_present(self, spec: VersionSpec) -> None:
        """Verify the version's models (the hash index makes this a few stat() calls when
        nothing changed) and fetch what is missing, before ComfyUI is asked for."""
        if not spec.models:
            return
        problems = await asyncio.to_thread(check_models, spec, self.settings, fix=True)
        if problems:
            first = problems[0]
            raise AppError("model_missing", f"{first['model']}: {first['error'] or first['problem']}"
                           + (f" ({first['detail']})" if first.get("detail") else ""),
                           suffix=first["model"], extra={"models": problems})

    async def _adopt(self, comfy: ComfyClient, prompt_id: str, prompt: dict, timeout: float,
                     on_progress: ProgressCallback | None):
        """Wait on a prompt a dead worker submitted; None when ComfyUI no longer knows it."""
        try:
            return await self._wait(comfy, prompt_id, prompt, timeout, on_progress, adopted=True)
        except AppError as exc:
            if exc.prefix != "comfy_crashed":
                raise
            log.info("job_resubmitted", prompt_id=prompt_id)
            return None

    def _stall_timeout(self, spec: VersionSpec) -> float:
        return spec.stall_timeout if spec.stall_timeout is not None else self.settings.stall_timeout

    async def _wait(self, comfy: ComfyClient, prompt_id: str, prompt: dict, timeout: float,
                    on_progress: ProgressCallback | None, adopted: bool = False, stall_timeout: float = 0.0):
        try:
            async with asyncio.timeout(timeout):
                return await comfy.wait(prompt_id, prompt=prompt, on_progress=on_progress, adopted=adopted,
                                        stall_timeout=stall_timeout)
        except TimeoutError:
            await comfy.cancel(prompt_id)
            raise AppError("job_timeout", f"the job ran longer than {timeout:g} s and was interrupted",
                           extra={"prompt_id": prompt_id}) from None
        except asyncio.CancelledError:
            # Shielded so the interrupt reaches ComfyUI even though our task is being cancelled.
            await asyncio.shield(comfy.cancel(prompt_id))
            raise
        except AppError as exc:
            if exc.prefix == "comfy_stalled":
                await self._recover_stall(comfy, prompt_id, stall_timeout)
            elif exc.prefix == "comfy_crashed":
                self.provider.report_crash(comfy)
            elif exc.prefix == "gpu_fault":
                await asyncio.shield(self.provider.report_gpu_fault(comfy, exc.extra.get("fault") or exc.detail))
            raise

    async def _recover_stall(self, comfy: ComfyClient, prompt_id: str, stall_timeout: float) -> None:
        """Interrupt a stalled prompt; a ComfyUI that does not end it within STALL_GRACE (a node
        that ignores interrupts, a frozen process) is restarted, or it would stall every job after."""
        grace = self.settings.stall_grace
        try:
            async with asyncio.timeout(grace):
                await comfy.cancel(prompt_id)
                await comfy.wait(prompt_id)
            log.warning("comfy_stall_interrupted", prompt_id=prompt_id)
            return
        except TimeoutError:
            pass
        except AppError as exc:  # it ended (interrupted, failed, lost): ComfyUI is free again
            log.warning("comfy_stall_interrupted", prompt_id=prompt_id, ended=exc.prefix)
            return
        log.error("comfy_stall_restart", prompt_id=prompt_id, grace=grace)
        await self.provider.restart(comfy, "stalled", stuck_for=stall_timeout)

    async def _forget(self, comfy: ComfyClient, prompt_id: str) -> None:
        try:
            await comfy.delete_history(prompt_id)
        except AppError as exc:
            log.warning("history_delete_failed", prompt_id=prompt_id, error=exc.code)

    async def _upload_images(self, comfy: ComfyClient, images: tuple[InputImage, ...],
                             job_id: str) -> dict[str, str]:
        """Upload input files into a per-job input subfolder; returns name -> ComfyUI path."""
        renames: dict[str, str] = {}
        for image in images:
            data = await self._image_bytes(image)
            answer = await comfy.upload_image(data, image.name, subfolder=f"{JOBS_FOLDER}/{job_id}", overwrite=True)
            stored = answer.get("name", image.name) if isinstance(answer, dict) else image.name
            renames[image.name] = f"{JOBS_FOLDER}/{job_id}/{stored}"
        return renames

    async def _image_bytes(self, image: InputImage) -> bytes:
        if image.url is not None:
            try:
                return await fetch_bytes(image.url, max_bytes=MAX_INPUT_IMAGE_BYTES,
                                         timeout=self.settings.workflow_url_timeout, session=self._session())
            except FetchFailed as exc:
                raise AppError("invalid_input_image", f"{image.name}: {exc.detail}", suffix=image.name) from None
        text = image.data_b64 or ""
        if text.startswith("data:"):
            text = text.partition(",")[2]  # data URI: data:image/png;base64,<payload>
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise AppError("invalid_input_image", f"{image.name}: image is not valid base64",
                           suffix=image.name) from None
        if not data:
            raise AppError("invalid_input_image", f"{image.name}: image is empty", suffix=image.name)
        return data


async def _call(callback: Callable[..., Awaitable[None] | None] | None, *args: Any) -> None:
    """Run a hook that may be sync or async."""
    if callback is not None:
        result = callback(*args)
        if asyncio.iscoroutine(result):
            await result
