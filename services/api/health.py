"""`/healthz`: answered from a snapshot that a background task refreshes every second.

The request path does no I/O: ComfyUI is pinged, supervisord asked (XML-RPC over its unix
socket) and gpuwatch's file read by the refresher, which also pre-serialises the answer.
`ok` is ComfyUI answering; a ComfyUI that is down makes /healthz answer 503 with the reason:
the `comfyui` program's own when it failed its checks, else supervisord's view of it.
`public_body` is what callers without the token get: `ok` and the public key, nothing that
maps the machine (paths, pids, versions).
"""
from __future__ import annotations

import asyncio
import json
import time
import xmlrpc.client
from typing import Any, Callable

from services import logs
from services.comfy.client import ComfyClient
from services.gpu import state as gpu_state
from services.periodic import Periodic
from services.pod import start_failure
from services.pod.supervisor import Supervisor
from services.security.envelope import public_key_b64

log = logs.get("api.health")

REFRESH_SECONDS = 1.0
STATS_EVERY = 30.0


class HealthState:
    def __init__(self, settings, comfy: ComfyClient, version: Callable[[], dict[str, Any]]):
        self.settings = settings
        self.comfy = comfy
        self.version = version
        self.supervisor = Supervisor(settings.supervisor_socket) if settings.supervisor_socket else None
        self.snapshot: dict[str, Any] = {}
        self.body = self.public_body = b"{}"
        self.status = 503
        self._stats: dict[str, Any] = {}
        self._stats_at = 0.0
        self._public_key = public_key_b64(settings)
        self._refresher = Periodic("health_refresh", REFRESH_SECONDS, self.refresh)

    def start(self) -> None:
        self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def refresh(self) -> None:
        comfy_up = await self.comfy.ping()
        if comfy_up and time.monotonic() - self._stats_at > STATS_EVERY:
            try:
                self._stats = await self.comfy.system_stats()
                self._stats_at = time.monotonic()
            except Exception:
                self._stats = {}
        programs: dict[str, Any] = {}
        if self.supervisor is not None:
            try:
                programs = await asyncio.to_thread(self.supervisor.programs)
            except (OSError, xmlrpc.client.Error) as exc:
                programs = {"error": f"supervisord unreachable: {type(exc).__name__}"}
        gpu = await asyncio.to_thread(gpu_state.read, self.settings.run_dir, 3 * self.settings.gpu_poll_interval + 5)
        comfy = {"state": "ready" if comfy_up else "down", "url": self.comfy.base_url}
        if comfy_up:
            system = self._stats.get("system", {})
            comfy["comfyui_version"] = system.get("comfyui_version")
            comfy["devices"] = [d.get("name") for d in self._stats.get("devices", [])]
        else:
            # The program's own reason (`comfy_init_failed:no_comfy_home: ...`) beats supervisord's
            # "Exited too quickly", which is all supervisord knows about it.
            failure = await asyncio.to_thread(start_failure.read, self.settings.run_dir)
            program = programs.get("comfyui") if isinstance(programs.get("comfyui"), dict) else None
            comfy["reason"] = failure or (f"comfyui program is {program['state']}: {program['description']}"
                                          if program else "ComfyUI does not answer")
        self.snapshot = {
            "ok": comfy_up,
            "model_dir": str(self.settings.models_dir),
            "server_public_key_b64": self._public_key,
            "comfy": comfy,
            "gpu": {k: gpu.get(k) for k in ("state", "reason", "checked_at", "gpus", "host") if k in gpu},
            "programs": programs,
            "version": await asyncio.to_thread(self.version),
        }
        self.body = json.dumps(self.snapshot).encode()
        self.public_body = json.dumps({"ok": comfy_up, "server_public_key_b64": self._public_key}).encode()
        self.status = 200 if comfy_up else 503
