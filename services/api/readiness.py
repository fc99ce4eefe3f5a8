"""`/readyz`: whether this Pod should be sent new jobs now, beside `/healthz`, which says whether
it is alive.

The two differ on purpose: a Pod whose job queue is full is healthy, only busy; whoever balances
the load should stop sending it jobs (not ready) but not restart it or call it broken. Ready
means /healthz is ok and the queue has room:

- ComfyUI answers, running the version it should (HealthState's `comfy.state` is `ready`, not
  `starting` or `down`: no start failure, no install under way);
- no GPU fault is latched (`gpu_fault` in the health snapshot) and gpuwatch does not report the
  GPU `degraded`;
- fewer than QUEUE_MAX_JOBS jobs are queued or running, the bound at which `/run` answers 503
  `queue_full`.

Like /healthz, the request path does no I/O: a background task counts the active jobs every
second (an indexed COUNT), and each answer is built in memory from that count and HealthState's
latest snapshot, so /readyz turns ready the moment /healthz does. `reasons` maps each failed
check to why; callers without the token get only `{"ready"}`, since a reason can name paths.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from services import logs
from services.api.health import HealthState
from services.periodic import Periodic
from services.store.jobs import JobStore

log = logs.get("api.readiness")

REFRESH_SECONDS = 1.0


def not_ready(snapshot: dict[str, Any], active: int | None, limit: int) -> dict[str, str]:
    """Why the Pod should get no new jobs now, by check; empty when it is ready."""
    if not snapshot or active is None:
        return {"unchecked": "the first checks have not run yet"}
    reasons = {}
    if snapshot.get("ok"):  # a backend serves (on a multi-GPU Pod another may be down: not a reason)
        comfy, fault, gpu = {"state": "ready"}, None, {}
    else:
        comfy, fault, gpu = snapshot.get("comfy", {}), snapshot.get("gpu_fault"), snapshot.get("gpu", {})
    state = comfy.get("state") or "down"
    if state != "ready":
        reasons[f"comfy_{state}"] = comfy.get("reason") or f"ComfyUI is {state}"
    if fault:
        reasons["gpu_fault"] = str(fault.get("reason") or "a GPU fault is latched")
    if gpu.get("state") == "degraded":
        reasons["gpu_degraded"] = gpu.get("reason") or "gpuwatch reports the GPU degraded"
    if limit and active >= limit:
        reasons["queue_full"] = f"{active} jobs are queued or running; QUEUE_MAX_JOBS is {limit}"
    return reasons


class Readiness:
    """Answers through the attributes HealthResource reads from a HealthState: `body`,
    `public_body` and `status`."""

    def __init__(self, settings, health: HealthState, store: JobStore):
        self.health = health
        self.store = store
        self.limit = settings.queue_max_jobs
        self.active: int | None = None
        self._logged = set(self.reasons())
        self._counter = Periodic("readiness_count", REFRESH_SECONDS, self.refresh)

    def start(self) -> None:
        self._counter.start()

    async def stop(self) -> None:
        await self._counter.stop()

    async def refresh(self) -> None:
        self.active = await asyncio.to_thread(self.store.active)
        reasons = self.reasons()
        if set(reasons) != self._logged:  # logged when the failing checks change, not the counts
            if reasons:
                log.warning("not_ready", reasons=reasons, active=self.active, limit=self.limit)
            else:
                log.info("ready", active=self.active, limit=self.limit)
            self._logged = set(reasons)

    def reasons(self) -> dict[str, str]:
        return not_ready(self.health.snapshot, self.active, self.limit)

    @property
    def status(self) -> int:
        return 503 if self.reasons() else 200

    @property
    def body(self) -> bytes:
        reasons = self.reasons()
        return json.dumps({"ready": not reasons, "reasons": reasons,
                           "queue": {"active": self.active, "max": self.limit}}).encode()

    @property
    def public_body(self) -> bytes:
        return json.dumps({"ready": not self.reasons()}).encode()
