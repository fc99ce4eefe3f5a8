"""Who owns ComfyUI for a process: the one protocol the job runner asks for ComfyUI through.

Four providers: `FixedComfy` (a ComfyUI someone else runs: `--comfy-url`, `COMFY_URL`),
`OwnedComfy` (a child process: serverless, CLI), `VersionedComfy` (an owned child per version,
switched between jobs) and `SupervisedComfy` (supervisord's `comfyui` program in Pod mode).
"""
from __future__ import annotations

from typing import Protocol

from services.comfy.client import ComfyClient
from services.versions.spec import VersionSpec


class ComfyProvider(Protocol):
    """Hands out a ready client for a version.

    Every `client_for` is paired with one `release()` when the job is done with ComfyUI, so a
    provider that switches versions knows when none is in flight. `current_version` is what
    runs (a version id, `comfy_home:<path>`, or None when unknown); jobs report it.
    """

    async def client_for(self, spec: VersionSpec) -> ComfyClient: ...

    def release(self) -> None: ...

    def report_crash(self) -> None: ...

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
