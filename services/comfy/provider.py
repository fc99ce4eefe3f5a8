"""Who owns ComfyUI for a process: the one protocol the job runner asks for ComfyUI through.

Four providers: `FixedComfy` (a ComfyUI someone else runs: `--comfy-url`, `COMFY_URL`),
`OwnedComfy` (a child process: serverless, CLI), `VersionedComfy` (an owned child per version,
switched between jobs) and `SupervisedComfy` (supervisord's `comfyui` program in Pod mode).
"""
from __future__ import annotations

from typing import Protocol

from services import logs
from services.comfy.client import ComfyClient
from services.versions.spec import VersionSpec

log = logs.get("comfy.provider")


class ComfyProvider(Protocol):
    """Hands out a ready client for a version, waiting while its ComfyUI starts or restarts
    (bounded by COMFY_START_TIMEOUT) rather than failing the job.

    Every `client_for` is paired with one `release()` when the job is done with ComfyUI, so a
    provider that switches versions knows when none is in flight. `current_version` is what
    runs (a version id, `comfy_home:<path>`, or None when unknown); jobs report it.
    """

    async def client_for(self, spec: VersionSpec) -> ComfyClient: ...

    def release(self) -> None: ...

    def report_crash(self) -> None: ...

    async def restart(self, reason: str, stuck_for: float) -> None:
        """Kill a ComfyUI that has been stuck for `stuck_for` seconds (the stall watchdog) and
        have it started again; returns once the old process is gone, so a job waiting next cannot
        reach it. A process younger than `stuck_for` is left alone: it is already a restart
        (another job's watchdog got there first)."""

    async def report_gpu_fault(self, fault: str) -> None:
        """A job met a sticky CUDA error (`gpu_fault`): the ComfyUI process that met it can run no
        more GPU work, a new one can (a fresh CUDA context)."""

    @property
    def current_version(self) -> str | None: ...


class FixedComfy:
    """A ComfyUI someone else runs and restarts."""

    def __init__(self, client: ComfyClient):
        self.client = client

    current_version = None  # whatever its owner runs

    async def client_for(self, spec: VersionSpec) -> ComfyClient:
        return self.client

    def release(self) -> None:
        pass

    def report_crash(self) -> None:
        pass  # its owner restarts it

    async def report_gpu_fault(self, fault: str) -> None:
        await self.restart("gpu_fault", 0.0)

    async def restart(self, reason: str, stuck_for: float) -> None:
        log.error("comfy_restart_impossible", reason=reason, url=self.client.base_url,
                  detail="this ComfyUI is run by someone else; restart it there")
