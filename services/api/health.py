"""`/healthz`: answered from a snapshot that a background task refreshes every second.

The request path does no I/O: ComfyUI is pinged, supervisord asked (XML-RPC over its unix
socket) and the small state files in RUN_DIR read by the refresher, which also pre-serialises
the answer. Each ComfyUI backend (one per GPU: services/comfy/backends.py) is judged on its own
(`backends`); `ok` means one of them answers and can use its GPU, so a faulted or degraded GPU
takes only its backend out of the job router's rotation (`routable()`), and /healthz answers 503
only when no backend can serve. A backend cannot serve when:

- ComfyUI does not answer. `comfy.state` says whether it is `starting` (supervisord is starting
  or backing off the `comfyui` program, or it runs and has not answered yet, for at most
  COMFY_START_TIMEOUT) or `down`; `comfy.reason` says why: the program's own start failure when
  it failed its checks, else supervisord's view of it.
- A GPU fault is latched (services/gpu/fault_latch.py): ComfyUI answers but its CUDA context is
  broken until it restarts. `gpu_fault` holds `{reason, at}`, `comfy.reason` the reason.
- gpuwatch reports its GPU `degraded` (uncorrected ECC errors on it; or the whole machine's: a
  lost GPU, an nvidia-smi that hangs probe after probe); `gpu.reason` says why. `absent` (no NVIDIA driver: CI, a laptop) and
  `unknown` do not: `unknown` is about the watcher (gpuwatch has not reported yet, its report is
  stale, nvidia-smi failed in a way that names no GPU fault, or hung once), not evidence that
  the GPU is broken, and a Pod must not flap out of its load balancer on it.

`public_body` is what callers without the token get: `ok` and the public key, nothing that
maps the machine (paths, pids, versions, start-up ledgers).
"""
from __future__ import annotations

import asyncio
import json
import time
import xmlrpc.client
from typing import Any, Callable, Sequence

from services import __version__, logs, startup_ledger
from services.comfy.backends import Backend
from services.comfy.client import ComfyClient
from services.comfy.supervised import PING_SECONDS
from services.gpu import fault_latch
from services.gpu import state as gpu_state
from services.periodic import Periodic
from services.pod import start_failure
from services.pod.supervisor import Supervisor
from services.security.envelope import public_key_b64

log = logs.get("api.health")

REFRESH_SECONDS = 1.0
STATS_EVERY = 30.0


class HealthState:
    def __init__(self, settings, backends: Sequence[Backend], clients: dict[int, ComfyClient],
                 runtimes: Callable[[], dict[int, str | None]]):
        """`runtimes()`: what each backend runs, from the store (services/store/comfy_state.py)."""
        self.settings = settings
        self.backends = tuple(backends)
        self.clients = clients
        self.runtimes = runtimes
        self.supervisor = Supervisor(settings.supervisor_socket) if settings.supervisor_socket else None
        self.snapshot: dict[str, Any] = {}
        self.body = self.public_body = b"{}"
        self.status = 503
        self._stats: dict[int, dict[str, Any]] = {}
        self._stats_at: dict[int, float] = {}
        self._answered_pid: dict[int, int | None] = {}  # each program's pid when its ComfyUI last answered
        self._ledger_pid: dict[int, int | None] = {}  # the last ComfyUI whose first answer went to its ledger
        self._public_key = public_key_b64(settings)
        self._verdict: tuple | None = None
        self._refresher = Periodic("health_refresh", REFRESH_SECONDS, self.refresh)

    def start(self) -> None:
        self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    def routable(self) -> list[int]:
        """The backends the job router may offer a job: those that serve, and those supervisord
        is (re)starting (a job for the version one runs had better wait seconds for it than
        have another backend switched), never one with a latched fault or a degraded GPU."""
        return [b["backend"] for b in self.snapshot.get("backends", ())
                if b["ok"] or (b["comfy"]["state"] == "starting" and not b["gpu_fault"]
                               and b["gpu_state"] != "degraded")]

    async def refresh(self) -> None:
        programs: dict[str, Any] = {}
        if self.supervisor is not None:
            try:
                programs = await asyncio.to_thread(self.supervisor.programs)
            except (OSError, xmlrpc.client.Error) as exc:
                programs = {"error": f"supervisord unreachable: {type(exc).__name__}"}
        gpu = await asyncio.to_thread(gpu_state.read, self.settings.run_dir, 3 * self.settings.gpu_poll_interval + 5)
        runtimes = await asyncio.to_thread(self.runtimes)
        # At once: a frozen backend's ping must not hold up the others' (or the snapshot's) refresh.
        views = list(await asyncio.gather(*(self._backend_view(b, programs, gpu, runtimes.get(b.index))
                                            for b in self.backends)))
        # The Pod serves while one backend does; the top-level `comfy`, `gpu_fault` (and `ok`)
        # describe a serving backend, else the first one, so a one-GPU Pod reads as it always did.
        shown = next((v for v in views if v["ok"]), views[0])
        ok = shown["ok"]
        self.snapshot = {
            "ok": ok,
            "model_dir": str(self.settings.models_dir),
            "server_public_key_b64": self._public_key,
            "comfy": shown["comfy"],
            "gpu": {k: gpu.get(k) for k in ("state", "reason", "checked_at", "gpus", "host") if k in gpu},
            "gpu_fault": shown["gpu_fault"],
            "backends": views,
            "programs": programs,
            "version": {"appliance": __version__, "comfy": runtimes.get(0)},
            "startup": await asyncio.to_thread(startup_ledger.read_full, self.settings.run_dir),
        }
        self.body = json.dumps(self.snapshot).encode()
        self.public_body = json.dumps({"ok": ok, "server_public_key_b64": self._public_key}).encode()
        self.status = 200 if ok else 503
        self._log_change(ok, views)

    async def _backend_view(self, backend: Backend, programs: dict[str, Any], gpu: dict[str, Any],
                            runtime: str | None) -> dict[str, Any]:
        """One backend: whether it answers, what supervisord says of its program, its latched GPU
        fault and its own GPU's state; `ok` when it can take a job."""
        index, client = backend.index, self.clients[backend.index]
        # Bounded like the hang watch's: a frozen ComfyUI must not stall the snapshot for a whole request timeout.
        comfy_up = await client.ping(timeout=PING_SECONDS)
        if comfy_up and time.monotonic() - self._stats_at.get(index, 0.0) > STATS_EVERY:
            try:
                self._stats[index] = await client.system_stats()
                self._stats_at[index] = time.monotonic()
            except Exception:
                self._stats[index] = {}
        run_dir = backend.run_dir
        fault = await asyncio.to_thread(fault_latch.read, run_dir)
        program = programs.get(backend.program) if isinstance(programs.get(backend.program), dict) else None
        comfy: dict[str, Any] = {"url": client.base_url}
        if comfy_up:
            self._answered_pid[index] = program["pid"] if program else None
            if program and program["pid"] != self._ledger_pid.get(index):
                self._ledger_pid[index] = program["pid"]
                await self._mark_answering(run_dir, program["pid"])
            stats = self._stats.get(index, {})
            comfy.update(state="ready", comfyui_version=stats.get("system", {}).get("comfyui_version"),
                         devices=[d.get("name") for d in stats.get("devices", [])])
            if fault:
                comfy["reason"] = f"gpu_fault: {fault['reason']}"
        else:
            failure = await asyncio.to_thread(start_failure.read, run_dir)
            comfy["state"], comfy["reason"] = comfy_down_state(failure, program, self._answered_pid.get(index),
                                                               self.settings.comfy_start_timeout)
        own_gpu = gpu_state.for_gpu(gpu, backend.gpu)
        return {"backend": index, "program": backend.program, "gpu": backend.gpu, "runtime": runtime,
                "ok": comfy_up and fault is None and own_gpu.get("state") != "degraded",
                "gpu_state": own_gpu.get("state"), "gpu_reason": own_gpu.get("reason"),
                "gpu_fault": fault, "comfy": comfy}

    async def _mark_answering(self, run_dir, pid: int) -> None:
        # ComfyUI was exec'd by services.comfyexec and cannot mark its own later stages; the
        # first successful ping of each ComfyUI pid is its `comfy_answering` (once, whichever
        # API worker sees it first: mark_for keeps the first).
        try:
            await asyncio.to_thread(startup_ledger.mark_for, run_dir, "comfyui", pid, "comfy_answering")
        except OSError as exc:
            log.warning("startup_ledger_unwritable", error=type(exc).__name__)

    def _log_change(self, ok: bool, views: list[dict[str, Any]]) -> None:
        # Once per change of what makes a backend (or the Pod) fail, not every second.
        verdict = (ok, *((v["ok"], v["comfy"]["state"], v["gpu_state"] == "degraded", v["gpu_fault"] is not None)
                         for v in views))
        if verdict == self._verdict:
            return
        self._verdict = verdict
        for view in views:
            if not view["ok"]:
                log.warning("backend_unhealthy", program=view["program"], comfy=view["comfy"]["state"],
                            comfy_reason=view["comfy"].get("reason"), gpu=view["gpu_state"],
                            gpu_reason=view["gpu_reason"],
                            gpu_fault=view["gpu_fault"]["reason"] if view["gpu_fault"] else None)
        if ok:
            log.info("healthy", serving=sum(v["ok"] for v in views), backends=len(views))
        else:
            log.warning("unhealthy", detail="no ComfyUI backend can serve")


def comfy_down_state(failure: str | None, program: dict[str, Any] | None, answered_pid: int | None,
                     start_timeout: float) -> tuple[str, str]:
    """`(state, reason)` of a ComfyUI that does not answer: `starting` while supervisord starts,
    backs off or is about to restart (EXITED, with autorestart) the `comfyui` program, or it runs
    but has not answered yet (within COMFY_START_TIMEOUT: loading custom nodes takes a while);
    else `down`. A program that
    recorded why it failed its checks is down, whatever supervisord does next."""
    if failure:
        return "down", failure
    if program is None:
        return "down", "ComfyUI does not answer"
    state, description = program["state"], program["description"]
    said = f"comfyui program is {state}" + (f": {description}" if description else "")
    if state in ("STARTING", "BACKOFF", "EXITED"):  # EXITED: autorestart starts it again at once
        return "starting", said
    if state == "RUNNING" and program["pid"] == answered_pid:
        return "down", f"comfyui program is RUNNING ({description}) but ComfyUI stopped answering"
    if state == "RUNNING" and (program.get("uptime") or 0) < start_timeout:
        return "starting", f"comfyui program is RUNNING ({description}); ComfyUI does not answer yet"
    if state == "RUNNING":
        return "down", (f"comfyui program is RUNNING ({description}) but ComfyUI has not answered "
                        f"within COMFY_START_TIMEOUT ({start_timeout:g} s)")
    return "down", said
