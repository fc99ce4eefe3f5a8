"""The job runner's ComfyUI provider in Pod mode: supervisord owns one ComfyUI program per GPU
(services/comfy/backends.py), and the API workers agree through the store
(services/store/comfy_state.py) on which backend each job uses and which version each runs.

A job goes to a serving or restarting backend (no GPU fault latched on it, its GPU not
degraded: services/api/health.py decides), preferring one that already runs its version. A job
whose version no suitable backend runs makes its worker the switcher of one: once no job of
another runtime holds a lease there, it writes that program's wanted runtime, restarts it
through supervisord and waits until it answers; the other backends keep serving meanwhile.
Installing a missing version (AUTO_INSTALL_VERSIONS=1) happens before the switch, while the
old version keeps serving.

Between jobs and during them it heals each backend: a job that finds its ComfyUI (re)starting
waits for it (COMFY_START_TIMEOUT) instead of failing; a ComfyUI that stops answering for
COMFY_HANG_TIMEOUT is killed (services/comfy/hang_watch.py), and so is one the stall watchdog
gives up on; supervisord then starts it again. Only that backend's jobs are affected.
"""
from __future__ import annotations

import asyncio
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Callable, Sequence

from services import logs
from services.comfy import backoff
from services.comfy import runtime as runtime_file
from services.comfy.backends import Backend
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


@dataclass
class Seat:
    """One backend as this worker uses it."""
    backend: Backend
    client: ComfyClient
    hang: HangWatch
    label: str | None = None  # the runtime this worker last got it for


class SupervisedComfy:
    def __init__(self, settings, store: ComfyStateStore, backends: Sequence[Backend],
                 clients: dict[int, ComfyClient], owner: str, routable: Callable[[], list[int]] | None = None):
        """`clients`: one per backend, shared with the rest of the worker; `routable()`: the
        backends that may take a job now (services/api/health.py), all of them when not given."""
        self.settings = settings
        self.store = store
        self.owner = owner
        self.seats = [Seat(b, clients[b.index], HangWatch(settings.comfy_hang_timeout, settings.comfy_start_timeout))
                      for b in backends]
        self._routable = routable or (lambda: [seat.backend.index for seat in self.seats])
        self.supervisor = Supervisor(settings.supervisor_socket) if settings.supervisor_socket else None
        self._leases = Periodic("lease_heartbeat", LEASE_SECONDS / 5,
                                lambda: asyncio.to_thread(self.store.beat_leases, self.owner))
        self._hang_checks = Periodic("comfy_hang_check", HANG_CHECK_SECONDS, self._check_hangs)

    # ---- lifespan: keep this worker's leases alive, watch for a frozen ComfyUI -------------
    def start(self) -> None:
        self._leases.start()
        if self.supervisor is not None and self.settings.comfy_hang_timeout:
            self._hang_checks.start()

    async def stop(self) -> None:
        await self._hang_checks.stop()
        await self._leases.stop()

    # ---- provider interface ---------------------------------------------------------------
    def _seat(self, comfy: ComfyClient) -> Seat:
        return next(seat for seat in self.seats if seat.client is comfy)

    def version_of(self, comfy: ComfyClient) -> str | None:
        return self._seat(comfy).label

    def backend_of(self, comfy: ComfyClient) -> int | None:
        return self._seat(comfy).backend.index

    async def client_for(self, spec: VersionSpec, backend: int | None = None) -> ComfyClient:
        wanted = resolve(spec, self.settings)
        if not await asyncio.to_thread(installed, spec, wanted, self.settings):
            if not self.settings.auto_install_versions:
                raise not_installed(spec, self.settings)
            await asyncio.to_thread(install, spec, self.settings)
        while True:
            # None routable (all down, or the first health check not run yet): any may come back.
            candidates = self._routable() or [seat.backend.index for seat in self.seats]
            verdict, index = await asyncio.to_thread(self.store.acquire, self.owner, wanted.label, candidates, backend)
            if verdict == "ok":
                seat = self.seats[index]
                break
            if verdict == "switch":
                seat = self.seats[index]
                await self._switch(seat, wanted)
                break
            await asyncio.sleep(POLL_SECONDS)
        seat.label = wanted.label
        try:
            await self._until_answering(seat, after="restart")
        except BaseException:
            self.release(seat.client)
            raise
        return seat.client

    def release(self, comfy: ComfyClient) -> None:
        self.store.release(self.owner, self._seat(comfy).backend.index)

    def report_crash(self, comfy: ComfyClient) -> None:
        pass  # supervisord restarts the comfyui program; the next job waits for it

    async def report_gpu_fault(self, comfy: ComfyClient, fault: str) -> None:
        # Latched before the kill: the comfyui program clears it when it starts the new process,
        # so a latch written after the kill would mark the healthy new process broken.
        run_dir = self._seat(comfy).backend.run_dir
        if await asyncio.to_thread(fault_latch.read, run_dir) is not None:
            return  # another job's fault: its worker is restarting ComfyUI already
        await asyncio.to_thread(fault_latch.latch, run_dir, fault)
        await self.restart(comfy, "gpu_fault", 0.0)

    async def restart(self, comfy: ComfyClient, reason: str, stuck_for: float) -> None:
        program = self._seat(comfy).backend.program
        if self.supervisor is None:
            log.error("comfy_restart_impossible", reason=reason, program=program,
                      detail="no supervisord to restart ComfyUI")
            return
        try:
            pid = await asyncio.to_thread(self.supervisor.kill_group, program, stuck_for)
        except (OSError, xmlrpc.client.Error) as exc:
            log.error("comfy_restart_failed", reason=reason, program=program, error=type(exc).__name__)
            return
        log.warning("comfy_killed", reason=reason, program=program, pid=pid, already_restarted=pid is None)

    async def _check_hangs(self) -> None:
        programs = await asyncio.to_thread(self.supervisor.programs)
        # At once: a frozen backend's ping waits PING_SECONDS, which must not delay the others' checks.
        await asyncio.gather(*(self._check_hang(seat, programs.get(seat.backend.program) or {})
                               for seat in self.seats))

    async def _check_hang(self, seat: Seat, program: dict) -> None:
        if program.get("state") != "RUNNING" or not program.get("pid"):
            seat.hang.forget()
            return
        answering = await seat.client.ping(timeout=PING_SECONDS)
        now = time.monotonic()
        if seat.hang.observe(program["pid"], answering, now):
            silent = round(seat.hang.silent_for(now), 1)
            log.error("comfy_hung", program=seat.backend.program, pid=program["pid"], silent_seconds=silent)
            seat.hang.forget()
            await asyncio.to_thread(self.supervisor.kill_group, seat.backend.program, 0.0, program["pid"])

    async def _usable(self, seat: Seat) -> bool:
        """ComfyUI answers, and not the process a GPU fault was latched on (it is being replaced)."""
        return (await asyncio.to_thread(fault_latch.read, seat.backend.run_dir) is None
                and await seat.client.ping(timeout=PING_SECONDS))

    async def _until_answering(self, seat: Seat, after: str) -> None:
        """Wait while supervisord (re)starts the backend's ComfyUI; fail at once when the program
        cannot start (its own recorded reason, or supervisord gave up), else after COMFY_START_TIMEOUT."""
        if await self._usable(seat):
            return
        name = seat.backend.program
        log.info("comfy_waiting", after=after, program=name)
        started = time.monotonic()
        while not await self._usable(seat):
            failure = await asyncio.to_thread(start_failure.read, seat.backend.run_dir)
            if failure:
                raise start_failure.as_error(failure)
            if self.supervisor is not None:
                program = (await asyncio.to_thread(self.supervisor.programs)).get(name, {})
                # Not EXITED: with autorestart, supervisord passes through it on every restart.
                if program.get("state") in ("FATAL", "STOPPED"):
                    raise AppError("comfy_init_failed", f"the {name} program is {program['state']}: "
                                   f"{program.get('description', '')}", suffix="exited")
            if time.monotonic() - started > self.settings.comfy_start_timeout:
                raise AppError("comfy_init_failed", f"ComfyUI did not answer within "
                               f"{self.settings.comfy_start_timeout:g} s after a {after}", suffix="timeout")
            if after == "switch":
                await asyncio.to_thread(self.store.beat_switch, self.owner, seat.backend.index)
            await asyncio.sleep(POLL_SECONDS)
        log.info("comfy_back", after=after, program=name, seconds=round(time.monotonic() - started, 2))

    # ---- switching ------------------------------------------------------------------------
    async def _switch(self, seat: Seat, wanted: Runtime) -> None:
        index = seat.backend.index
        try:
            while await asyncio.to_thread(self.store.in_use_elsewhere, wanted.label, index):
                await asyncio.to_thread(self.store.beat_switch, self.owner, index)
                await asyncio.sleep(POLL_SECONDS)
            log.info("comfy_switching", program=seat.backend.program, to=wanted.label,
                     previous=await asyncio.to_thread(self.store.runtime, index))
            runtime_file.write_wanted(seat.backend.run_dir, wanted)
            await self._restart_comfyui(seat)
            await asyncio.to_thread(self.store.finish_switch, self.owner, wanted.label, index)
            log.info("comfy_switched", program=seat.backend.program, to=wanted.label)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self.store.abort_switch, self.owner, index))
            raise

    async def _restart_comfyui(self, seat: Seat) -> None:
        if self.supervisor is None:
            raise AppError("comfy_init_failed", "switching versions needs supervisord (Pod mode)", suffix="no_supervisor")
        backoff.forget(seat.backend.run_dir)  # a switch is no crash: no back-off for it
        try:
            await asyncio.to_thread(self.supervisor.restart, seat.backend.program)
        except (OSError, xmlrpc.client.Error) as exc:
            raise AppError("comfy_init_failed", f"supervisord could not start {seat.backend.program}: {exc}",
                           suffix="exited") from None
        await self._until_answering(seat, after="switch")
