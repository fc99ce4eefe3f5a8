"""Pod mode's cross-process agreement on which ComfyUI runtime runs (services/comfy/supervised.py).

Every API worker runs jobs, but there is one ComfyUI. A worker whose job needs the running
runtime takes a lease; one that needs another runtime becomes the switcher: it marks the
target (from then on no new lease on the old runtime is granted, so the drain ends), waits
until no live lease on another runtime is left, restarts ComfyUI, and records the new
runtime. Leases and the switch carry heartbeats, so a worker killed mid-job or mid-switch
does not block the others for longer than LEASE_SECONDS / SWITCH_STALE_SECONDS.
"""
from __future__ import annotations

import time

from services.store.db import Database

LEASE_SECONDS = 15.0
SWITCH_STALE_SECONDS = 30.0


class ComfyStateStore:
    def __init__(self, db: Database):
        self.db = db

    def runtime(self) -> str | None:
        return self.db.read("SELECT runtime FROM comfy_state WHERE id = 1")[0]["runtime"]

    def set_runtime(self, label: str) -> None:
        """The `comfyui` program records what it actually runs."""
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_state SET runtime = ? WHERE id = 1", (label,))

    def acquire(self, owner: str, label: str) -> str:
        """'ok' (a lease is held), 'switch' (the caller must switch ComfyUI) or 'wait'."""
        now = time.time()
        with self.db.write() as conn:
            state = conn.execute("SELECT * FROM comfy_state WHERE id = 1").fetchone()
            target, switcher = state["target"], state["switcher"]
            if target is not None and (state["switch_heartbeat"] or 0) < now - SWITCH_STALE_SECONDS:
                target = switcher = None  # the switcher died; its claim lapses
            if target is None and state["runtime"] == label:
                self._add_lease(conn, owner, label, now)
                return "ok"
            if target is None or switcher == owner:
                conn.execute("UPDATE comfy_state SET target = ?, switcher = ?, switch_heartbeat = ? WHERE id = 1",
                             (label, owner, now))
                return "switch"
            return "wait"

    @staticmethod
    def _add_lease(conn, owner: str, label: str, now: float) -> None:
        conn.execute("INSERT INTO comfy_leases (owner, runtime, count, heartbeat_at) VALUES (?, ?, 1, ?)"
                     " ON CONFLICT(owner) DO UPDATE SET count = CASE WHEN runtime = excluded.runtime"
                     " THEN count + 1 ELSE 1 END, runtime = excluded.runtime, heartbeat_at = excluded.heartbeat_at",
                     (owner, label, now))

    def in_use_elsewhere(self, label: str) -> int:
        """Workers (the caller included) with live leases on a runtime other than `label`."""
        rows = self.db.read("SELECT COUNT(*) AS n FROM comfy_leases WHERE runtime != ? AND count > 0"
                            " AND heartbeat_at >= ?", (label, time.time() - LEASE_SECONDS))
        return rows[0]["n"]

    def beat_switch(self, owner: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_state SET switch_heartbeat = ? WHERE id = 1 AND switcher = ?",
                         (time.time(), owner))

    def finish_switch(self, owner: str, label: str) -> None:
        now = time.time()
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_state SET runtime = ?, target = NULL, switcher = NULL WHERE id = 1", (label,))
            self._add_lease(conn, owner, label, now)

    def abort_switch(self, owner: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_state SET target = NULL, switcher = NULL WHERE id = 1 AND switcher = ?",
                         (owner,))

    def release(self, owner: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_leases SET count = MAX(count - 1, 0) WHERE owner = ?", (owner,))

    def beat_leases(self, owner: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_leases SET heartbeat_at = ? WHERE owner = ?", (time.time(), owner))
