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

    Every `client_for` is paired with one `release(client)` when the job is done with ComfyUI,
    so a provider that switches versions knows when none is in flight. A Pod with several GPUs
    has one ComfyUI per GPU (services/comfy/supervised.py): the client names which one the job
    got, and every later call about it passes that client back.
    """

    async def client_for(self, spec: VersionSpec, backend: int | None = None) -> ComfyClient:
        """`backend`: the one that has the job's prompt, when a job is adopted from a dead worker."""

    def release(self, comfy: ComfyClient) -> None: ...

    def report_crash(self, comfy: ComfyClient) -> None: ...

    async def restart(self, comfy: ComfyClient, reason: str, stuck_for: float) -> None:
        """Kill a ComfyUI that has been stuck for `stuck_for` seconds (the stall watchdog) and
        have it started again; returns once the old process is gone, so a job waiting next cannot
        reach it. A process younger than `stuck_for` is left alone: it is already a restart
        (another job's watchdog got there first)."""

    async def report_gpu_fault(self, comfy: ComfyClient, fault: str) -> None:
        """A job met a sticky CUDA error (`gpu_fault`): the ComfyUI process that met it can run no
        more GPU work, a new one can (a fresh CUDA context)."""

    def version_of(self, comfy: ComfyClient) -> str | None:
        """What that ComfyUI runs (a version id, `comfy_home:<path>`, or None when unknown);
        jobs report it."""

    def backend_of(self, comfy: ComfyClient) -> int | None:
        """Which of the Pod's backends it is (services/comfy/backends.py); None: the only one."""


class OneComfy:
    """The part of the protocol every provider of a single ComfyUI shares."""

    current_version: str | None

    def version_of(self, comfy: ComfyClient) -> str | None:
        return self.current_version

    def backend_of(self, comfy: ComfyClient) -> int | None:
        return None


class FixedComfy(OneComfy):
    """A ComfyUI someone else runs and restarts."""

    def __init__(self, client: ComfyClient):
        self.client = client

    current_version = None  # whatever its owner runs

    async def client_for(self, spec: VersionSpec, backend: int | None = None) -> ComfyClient:
        return self.client

    def release(self, comfy: ComfyClient) -> None:
        pass

    def report_crash(self, comfy: ComfyClient) -> None:
        pass  # its owner restarts it

    async def report_gpu_fault(self, comfy: ComfyClient, fault: str) -> None:
        await self.restart(comfy, "gpu_fault", 0.0)

    async def restart(self, comfy: ComfyClient, reason: str, stuck_for: float) -> None:
        log.error("comfy_restart_impossible", reason=reason, url=self.client.base_url,
                  detail="this ComfyUI is run by someone else; restart it there")
