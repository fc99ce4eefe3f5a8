"""Switching the ComfyUI this process owns when a job names another version.

`VersionedComfy` is the job runner's provider for a ComfyUI this process owns (which runtime a
version runs: services/comfy/runtime.py). Jobs of the
running version share it concurrently. A job for another version queues; jobs that arrive
after it queue behind it (so a steady stream of the running version cannot starve it); once
the jobs in flight have released ComfyUI, the first in the queue installs its version if
needed (`AUTO_INSTALL_VERSIONS=1`, else `version_not_installed:<id>`), stops the running
ComfyUI and starts its own. The version is installed while the old ComfyUI still runs idle,
so a failed install leaves the old version running.

How a ComfyUI is started is injected (`start`): the serverless handler and the CLI own a
child process (the default, through ComfyLauncher); Pod mode can pass one that drives
supervisord's program instead.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Protocol

from services import logs
from services.comfy.client import ComfyClient
from services.comfy.launcher import ComfyLauncher
from services.comfy.owned import OwnedComfy
from services.comfy.provider import OneComfy
from services.comfy.runtime import Runtime, installed, not_installed, resolve
from services.versions.install import install
from services.versions.spec import VersionSpec

log = logs.get("comfy.versioned")


class Started(Protocol):
    """A started ComfyUI for one runtime (OwnedComfy's shape)."""

    async def client_for(self, spec: VersionSpec) -> ComfyClient: ...

    def report_crash(self, comfy: ComfyClient) -> None: ...

    async def restart(self, comfy: ComfyClient, reason: str, stuck_for: float) -> None: ...

    async def report_gpu_fault(self, comfy: ComfyClient, fault: str) -> None: ...

    async def close(self) -> None: ...


class VersionedComfy(OneComfy):
    def __init__(self, settings, *, start: Callable[[Runtime], Started] | None = None,
                 line_sink: Callable[[str], None] | None = None):
        self.settings = settings
        self._line_sink = line_sink
        self._start = start or self._own_child
        self._running: Runtime | None = None
        self._comfy: Started | None = None
        self._leases = 0              # jobs holding a client of the running ComfyUI
        self._switching = False
        self._queue: list[tuple[object, Runtime]] = []   # waiting jobs, in arrival order
        self._changed = asyncio.Event()

    @property
    def current_version(self) -> str | None:
        return self._running.label if self._running else None

    def _own_child(self, runtime: Runtime) -> OwnedComfy:
        launcher = ComfyLauncher.from_settings(self.settings, comfy_home=runtime.comfy_home, python=runtime.python,
                                               extra_args=runtime.args, line_sink=self._line_sink)
        return OwnedComfy(launcher, self.settings.comfy_start_timeout)

    def _notify(self) -> None:
        # Single-threaded asyncio: state changes between awaits are atomic, so waking every
        # waiter to re-check its own condition is all the synchronisation needed.
        self._changed.set()
        self._changed = asyncio.Event()

    async def client_for(self, spec: VersionSpec, backend: int | None = None) -> ComfyClient:
        """A ready client of ComfyUI running this version; pair every call with `release(client)`."""
        runtime = resolve(spec, self.settings)
        if not self.settings.auto_install_versions and not installed(spec, runtime, self.settings):
            raise not_installed(spec, self.settings)
        ticket = object()
        self._queue.append((ticket, runtime))
        try:
            must_switch = await self._turn(ticket, spec, runtime)
        finally:
            self._queue.remove((ticket, runtime))
            self._notify()
        if must_switch:
            await self._switch(spec, runtime)
        else:
            self._leases += 1
        try:
            return await self._comfy.client_for(spec)  # starts it, or restarts it after a crash
        except BaseException:
            self._leases -= 1
            self._notify()
            raise

    async def _turn(self, ticket: object, spec: VersionSpec, runtime: Runtime) -> bool:
        """Wait until the job may use ComfyUI; True when it must switch it first."""
        while True:
            if not self._switching:
                position = next(i for i, (t, _) in enumerate(self._queue) if t is ticket)
                # Share the running ComfyUI unless a job queued earlier waits for another one.
                if (self._running == runtime and all(r == runtime for _, r in self._queue[:position])
                        and installed(spec, runtime, self.settings)):
                    return False
                if position == 0 and self._leases == 0:
                    return True
            await self._changed.wait()

    async def _switch(self, spec: VersionSpec, runtime: Runtime) -> None:
        """Runs with no job in flight; other jobs wait until it ends."""
        self._switching = True
        old = self._running
        try:
            if not installed(spec, runtime, self.settings):
                if old is not None and old.label == spec.id:
                    await self._stop()  # reinstalling replaces the folder the running one uses
                log.info("version_auto_install", version_id=spec.id)
                await asyncio.to_thread(install, spec, self.settings)
            await self._stop()
            self._comfy = self._start(runtime)
            self._running = runtime
            self._leases += 1
            log.info("version_switched", version=runtime.label, previous=old.label if old else None)
        finally:
            self._switching = False
            self._notify()

    async def _stop(self) -> None:
        comfy, self._comfy, self._running = self._comfy, None, None
        if comfy is not None:
            await comfy.close()

    def release(self, comfy: ComfyClient) -> None:
        """The job that got a client is done with it (ComfyUI may be switched once none is left)."""
        self._leases -= 1
        self._notify()

    def report_crash(self, comfy: ComfyClient) -> None:
        if self._comfy is not None:
            self._comfy.report_crash(comfy)

    async def report_gpu_fault(self, comfy: ComfyClient, fault: str) -> None:
        if self._comfy is not None:
            await self._comfy.report_gpu_fault(comfy, fault)

    async def restart(self, comfy: ComfyClient, reason: str, stuck_for: float) -> None:
        if self._comfy is not None:
            await self._comfy.restart(comfy, reason, stuck_for)

    async def close(self) -> None:
        await self._stop()
