"""The job runner's ComfyUI provider in Pod mode: supervisord owns ComfyUI, and the API
workers agree through the store (services/store/comfy_state.py) on which version it runs.

A job whose version ComfyUI already runs takes a lease and goes. A job for another version
makes its worker the switcher: once no job of another runtime holds a lease, it writes the
wanted runtime for the `comfyui` program, restarts that program through supervisord and
waits until ComfyUI answers. Installing a missing version (AUTO_INSTALL_VERSIONS=1) happens
before the switch, while the old version keeps serving.
"""
from __future__ import annotations

import asyncio
import time
import xmlrpc.client

from services import logs
from services.comfy.client import ComfyClient
from services.errors import AppError
from services.comfy import backoff
from services.comfy import runtime as runtime_file
from services.comfy.runtime import Runtime, installed, not_installed, resolve
from services.periodic import Periodic
from services.pod.supervisor import Supervisor
from services.store.comfy_state import LEASE_SECONDS, ComfyStateStore
from services.versions.install import install
from services.versions.spec import VersionSpec

log = logs.get("comfy.supervised")

POLL_SECONDS = 0.2


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

    # ---- lifespan: keep this worker's leases alive ----------------------------------------
    def start(self) -> None:
        self._leases.start()

    async def stop(self) -> None:
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
        return self.client

    def release(self) -> None:
        self.store.release(self.owner)

    def report_crash(self) -> None:
        pass  # supervisord restarts the comfyui program

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
        deadline = time.monotonic() + self.settings.comfy_start_timeout
        while not await self.client.ping():
            if time.monotonic() > deadline:
                raise AppError("comfy_init_failed", "ComfyUI did not answer after the switch", suffix="timeout")
            program = (await asyncio.to_thread(self.supervisor.programs)).get("comfyui", {})
            if program.get("state") in ("FATAL", "EXITED", "BACKOFF"):
                raise AppError("comfy_init_failed", f"the comfyui program is {program['state']}: "
                               f"{program.get('description', '')}", suffix="exited")
            await asyncio.to_thread(self.store.beat_switch, self.owner)
            await asyncio.sleep(POLL_SECONDS)
