"""The job runner's ComfyUI provider in Pod mode: supervisord owns ComfyUI, and the API
workers agree through the store (services/store/comfy_state.py) on which version it runs.

A job whose version ComfyUI already runs takes a lease and goes. A job for another version
makes its worker the switcher: once no job of another runtime holds a lease, it writes the
wanted runtime for the `comfyui` program, restarts that program through supervisord and
waits until ComfyUI answers. Installing a missing version (AUTO_INSTALL_VERSIONS=1) happens
before the switch, while the old version keeps serving.

Between jobs and during them it heals ComfyUI: a job that finds ComfyUI (re)starting waits for
it (COMFY_START_TIMEOUT) instead of failing; a ComfyUI that stops answering for
COMFY_HANG_TIMEOUT is killed (services/comfy/hang_watch.py), and so is one the stall watchdog
gives up on; supervisord then starts it again.
"""
from __future__ import annotations

import asyncio
import time
import xmlrpc.client

from services import logs
from services.comfy import backoff
from services.comfy import runtime as runtime_file
from services.comfy.client import ComfyClient
from services.comfy.hang_watch import HangWatch
from services.comfy.runtime import Runtime, installed, not_installed, resolve
from services.errors import AppError
from services.gpu import fault_latch
from services.periodic import Periodic
from services.pod import start_failure
from services.pod.supervisor import Supervisor
from services.store.comfy_state import LEASE_SECONDS, ComfyStateStore
from services.versions.install import install
from services.versions.spec import VersionSpec

log = logs.get("comfy.supervised")

POLL_SECONDS = 0.2
PING_SECONDS = 5.0        # a healthy ComfyUI answers in milliseconds, even mid-job
# Often enough to see a new ComfyUI answer before anything can freeze it: one never seen
# answering gets COMFY_START_TIMEOUT, not COMFY_HANG_TIMEOUT (services/comfy/hang_watch.py).
HANG_CHECK_SECONDS = 1.0


class SupervisedComfy:
    def __init__(self, settings, store: ComfyStateStore, client: ComfyClient, owner: str):
        self.settings = settings
        self.store = store
        self.client = client
        self.owner = owner
        self.supervisor = Supervisor(settings.supervisor_socket) if settings.supervisor_socket else None
        self._label: str | None = None
        self._leases = Periodic("lease_heartbeat", LEASE_SECONDS / 5,
                                lambda: asyncio.to_thread(self.store.beat_leases, self.owner))
        # The store tells workers apart, not a worker's own jobs: inside one worker, one job
        # at a time asks for ComfyUI, so two of its jobs never both become the switcher.
        self._asking = asyncio.Lock()
        self._hang = HangWatch(settings.comfy_hang_timeout, settings.comfy_start_timeout)
        self._hang_checks = Periodic("comfy_hang_check", HANG_CHECK_SECONDS, self._check_hang)

    # ---- lifespan: keep this worker's leases alive, watch for a frozen ComfyUI -------------
    def start(self) -> None:
        self._leases.start()
        if self.supervisor is not None and self.settings.comfy_hang_timeout:
            self._hang_checks.start()

    async def stop(self) -> None:
        await self._hang_checks.stop()
        await self._leases.stop()

    # ---- provider interface ---------------------------------------------------------------
    @property
    def current_version(self) -> str | None:
        return self._label

    async def client_for(self, spec: VersionSpec) -> ComfyClient:
        wanted = resolve(spec, self.settings)
        if not await asyncio.to_thread(installed, spec, wanted, self.settings):
            if not self.settings.auto_install_versions:
                raise not_installed(spec, self.settings)
            await asyncio.to_thread(install, spec, self.settings)
        async with self._asking:
            while True:
                verdict = await asyncio.to_thread(self.store.acquire, self.owner, wanted.label)
                if verdict == "ok":
                    break
                if verdict == "switch":
                    await self._switch(wanted)
                    break
                await asyncio.sleep(POLL_SECONDS)
        self._label = wanted.label
        try:
            await self._until_answering(after="restart")
        except BaseException:
            self.release()
            raise
        return self.client

    def release(self) -> None:
        self.store.release(self.owner)

    def report_crash(self) -> None:
        pass  # supervisord restarts the comfyui program; the next job waits for it

    async def report_gpu_fault(self, fault: str) -> None:
        # Latched before the kill: the comfyui program clears it when it starts the new process,
        # so a latch written after the kill would mark the healthy new process broken.
        if await asyncio.to_thread(fault_latch.read, self.settings.run_dir) is not None:
            return  # another job's fault: its worker is restarting ComfyUI already
        await asyncio.to_thread(fault_latch.latch, self.settings.run_dir, fault)
        await self.restart("gpu_fault", 0.0)

    async def restart(self, reason: str, stuck_for: float) -> None:
        if self.supervisor is None:
            log.error("comfy_restart_impossible", reason=reason, detail="no supervisord to restart ComfyUI")
            return
        try:
            pid = await asyncio.to_thread(self.supervisor.kill_group, "comfyui", stuck_for)
        except (OSError, xmlrpc.client.Error) as exc:
            log.error("comfy_restart_failed", reason=reason, error=type(exc).__name__)
            return
        log.warning("comfy_killed", reason=reason, pid=pid, already_restarted=pid is None)

    async def _check_hang(self) -> None:
        program = (await asyncio.to_thread(self.supervisor.programs)).get("comfyui") or {}
        if program.get("state") != "RUNNING" or not program.get("pid"):
            self._hang.forget()
            return
        answering = await self.client.ping(timeout=PING_SECONDS)
        now = time.monotonic()
        if self._hang.observe(program["pid"], answering, now):
            silent = round(self._hang.silent_for(now), 1)
            log.error("comfy_hung", pid=program["pid"], silent_seconds=silent)
            self._hang.forget()
            await asyncio.to_thread(self.supervisor.kill_group, "comfyui", 0.0, program["pid"])

    async def _usable(self) -> bool:
        """ComfyUI answers, and not the process a GPU fault was latched on (it is being replaced)."""
        return (await asyncio.to_thread(fault_latch.read, self.settings.run_dir) is None
                and await self.client.ping(timeout=PING_SECONDS))

    async def _until_answering(self, after: str) -> None:
        """Wait while supervisord (re)starts ComfyUI; fail at once when the program cannot start
        (its own recorded reason, or supervisord gave up), else after COMFY_START_TIMEOUT."""
        if await self._usable():
            return
        log.info("comfy_waiting", after=after)
        started = time.monotonic()
        while not await self._usable():
            failure = await asyncio.to_thread(start_failure.read, self.settings.run_dir)
            if failure:
                raise start_failure.as_error(failure)
            if self.supervisor is not None:
                program = (await asyncio.to_thread(self.supervisor.programs)).get("comfyui", {})
                if program.get("state") in ("FATAL", "EXITED", "STOPPED"):
                    raise AppError("comfy_init_failed", f"the comfyui program is {program['state']}: "
                                   f"{program.get('description', '')}", suffix="exited")
            if time.monotonic() - started > self.settings.comfy_start_timeout:
                raise AppError("comfy_init_failed", f"ComfyUI did not answer within "
                               f"{self.settings.comfy_start_timeout:g} s after a {after}", suffix="timeout")
            if after == "switch":
                await asyncio.to_thread(self.store.beat_switch, self.owner)
            await asyncio.sleep(POLL_SECONDS)
        log.info("comfy_back", after=after, seconds=round(time.monotonic() - started, 2))

    # ---- switching ------------------------------------------------------------------------
    async def _switch(self, wanted: Runtime) -> None:
        try:
            while await asyncio.to_thread(self.store.in_use_elsewhere, wanted.label):
                await asyncio.to_thread(self.store.beat_switch, self.owner)
                await asyncio.sleep(POLL_SECONDS)
            log.info("comfy_switching", to=wanted.label, previous=await asyncio.to_thread(self.store.runtime))
            runtime_file.write_wanted(self.settings.run_dir, wanted)
            await self._restart_comfyui()
            await asyncio.to_thread(self.store.finish_switch, self.owner, wanted.label)
            log.info("comfy_switched", to=wanted.label)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self.store.abort_switch, self.owner))
            raise

    async def _restart_comfyui(self) -> None:
        if self.supervisor is None:
            raise AppError("comfy_init_failed", "switching versions needs supervisord (Pod mode)", suffix="no_supervisor")
        backoff.forget(self.settings.run_dir)  # a switch is no crash: no back-off for it
        try:
            await asyncio.to_thread(self.supervisor.restart, "comfyui")
        except (OSError, xmlrpc.client.Error) as exc:
            raise AppError("comfy_init_failed", f"supervisord could not start comfyui: {exc}",
                           suffix="exited") from None
        await self._until_answering(after="switch")
