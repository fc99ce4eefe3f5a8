"""A ComfyUI this process owns: started on first use, restarted after a crash, when it stops
answering, or when the stall watchdog gives up on it; jobs wait while it (re)starts.

The serverless handler and the CLI run ComfyUI as their own child through the launcher; the
Pod API does not (supervisord owns it there, see services/comfy/supervised.py).
"""
from __future__ import annotations

import asyncio

from services.comfy.client import ComfyClient
from services.comfy.launcher import ComfyLauncher
from services.comfy.provider import OneComfy
from services.versions.spec import VersionSpec


class OwnedComfy(OneComfy):
    def __init__(self, launcher: ComfyLauncher, start_timeout: float):
        self.launcher = launcher
        self.start_timeout = start_timeout
        self.client = ComfyClient(launcher.url)
        self._lock = asyncio.Lock()

    @property
    def current_version(self) -> str:
        return f"comfy_home:{self.launcher.comfy_home}"

    async def client_for(self, spec: VersionSpec, backend: int | None = None) -> ComfyClient:
        async with self._lock:  # one start at a time; later jobs find it ready
            await asyncio.to_thread(self.launcher.ensure_running, self.start_timeout)
        return self.client

    def release(self, comfy: ComfyClient) -> None:
        pass  # one ComfyUI for every job: nothing waits for jobs to end

    def report_crash(self, comfy: ComfyClient) -> None:
        self.launcher.mark_defunct()

    async def report_gpu_fault(self, comfy: ComfyClient, fault: str) -> None:
        await self.restart(comfy, "gpu_fault", 0.0)

    async def restart(self, comfy: ComfyClient, reason: str, stuck_for: float) -> None:
        # Under the start lock: a job asking for ComfyUI meanwhile waits, then starts a fresh one.
        async with self._lock:
            await asyncio.to_thread(self.launcher.kill, stuck_for)

    async def close(self) -> None:
        await self.client.close()
        await asyncio.to_thread(self.launcher.stop)
