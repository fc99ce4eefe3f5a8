"""Pod mode's cross-process agreement on which ComfyUI backend runs which runtime, and which
jobs use each (services/comfy/supervised.py; the backends: services/comfy/backends.py).

Every API worker runs jobs; there is one ComfyUI per GPU. A job takes a lease on a backend
chosen here, in one transaction, so that two workers never both take the last idle backend:

1. an idle backend already running the job's runtime;
2. one on its runtime with fewer than FEED_DEPTH jobs: one runs, one waits in ComfyUI's own
   queue, so the GPU never idles between two prompts;
3. an idle backend on another runtime, which the caller switches (a ComfyUI restart);
4. the least loaded backend on its runtime;
5. else the caller switches the least loaded backend: it marks the target (from then on no new
   lease on that backend's old runtime is granted, so its drain ends), waits until no live lease
   on another runtime is left there, restarts that ComfyUI and records the new runtime.

A job that must wait for a switch already under way to its runtime waits. Leases and switches
carry heartbeats, so a worker killed mid-job or mid-switch does not block the others for longer
than LEASE_SECONDS / SWITCH_STALE_SECONDS. With one backend this is the single ComfyUI's rule:
share it while it runs the job's runtime, else drain it and switch.
"""
from __future__ import annotations

import time
from typing import Sequence

from services.store.db import Database

LEASE_SECONDS = 15.0
SWITCH_STALE_SECONDS = 30.0
FEED_DEPTH = 2


class ComfyStateStore:
    def __init__(self, db: Database):
        self.db = db

    def runtime(self, backend: int = 0) -> str | None:
        rows = self.db.read("SELECT runtime FROM comfy_backends WHERE backend = ?", (backend,))
        return rows[0]["runtime"] if rows else None

    def runtimes(self) -> dict[int, str | None]:
        return {r["backend"]: r["runtime"] for r in self.db.read("SELECT backend, runtime FROM comfy_backends")}

    def set_runtime(self, label: str, backend: int = 0) -> None:
        """A `comfyui` program records what it actually runs."""
        with self.db.write() as conn:
            conn.execute("INSERT INTO comfy_backends (backend, runtime) VALUES (?, ?)"
                         " ON CONFLICT(backend) DO UPDATE SET runtime = excluded.runtime", (backend, label))

    def acquire(self, owner: str, label: str, backends: Sequence[int],
                prefer: int | None = None) -> tuple[str, int | None]:
        """('ok', b): a lease on backend b is held; ('switch', b): the caller must switch b to
        `label` first; ('wait', None). `backends`: those that may take the job (the healthy ones);
        `prefer`: the backend that has the job's prompt (a job adopted from a dead worker)."""
        now = time.time()
        with self.db.write() as conn:
            conn.executemany("INSERT OR IGNORE INTO comfy_backends (backend) VALUES (?)", [(b,) for b in backends])
            rows = {r["backend"]: r for r in conn.execute("SELECT * FROM comfy_backends")}
            load = {r["backend"]: r["n"] for r in conn.execute(
                "SELECT backend, SUM(count) AS n FROM comfy_leases WHERE count > 0 AND heartbeat_at >= ?"
                " GROUP BY backend", (now - LEASE_SECONDS,))}

            def target(b: int) -> str | None:
                row = rows[b]
                if row["target"] is not None and (row["switch_heartbeat"] or 0) < now - SWITCH_STALE_SECONDS:
                    return None  # the switcher died; its claim lapses
                return row["target"]

            def busy(b: int) -> int:
                return load.get(b, 0)

            def lease(b: int) -> tuple[str, int]:
                self._add_lease(conn, owner, b, label, now)
                return "ok", b

            def switch(b: int) -> tuple[str, int]:
                conn.execute("UPDATE comfy_backends SET target = ?, switcher = ?, switch_heartbeat = ?"
                             " WHERE backend = ?", (label, owner, now, b))
                return "switch", b

            free = [b for b in backends if target(b) is None]
            same = sorted((b for b in free if rows[b]["runtime"] == label), key=lambda b: (busy(b), b))
            if prefer in same:
                return lease(prefer)
            if same and busy(same[0]) < FEED_DEPTH:
                return lease(same[0])
            idle = [b for b in free if busy(b) == 0]
            if idle:
                return switch(idle[0])
            if any(target(b) == label for b in backends):
                return "wait", None  # a switch to this runtime is under way
            if same:
                return lease(same[0])
            if free:
                return switch(min(free, key=lambda b: (busy(b), b)))
            return "wait", None

    @staticmethod
    def _add_lease(conn, owner: str, backend: int, label: str, now: float) -> None:
        conn.execute("INSERT INTO comfy_leases (owner, backend, runtime, count, heartbeat_at) VALUES (?, ?, ?, 1, ?)"
                     " ON CONFLICT(owner, backend) DO UPDATE SET count = CASE WHEN runtime = excluded.runtime"
                     " THEN count + 1 ELSE 1 END, runtime = excluded.runtime, heartbeat_at = excluded.heartbeat_at",
                     (owner, backend, label, now))

    def in_use_elsewhere(self, label: str, backend: int) -> int:
        """Workers (the caller included) with live leases on `backend` for a runtime other than `label`."""
        rows = self.db.read("SELECT COUNT(*) AS n FROM comfy_leases WHERE backend = ? AND runtime != ?"
                            " AND count > 0 AND heartbeat_at >= ?", (backend, label, time.time() - LEASE_SECONDS))
        return rows[0]["n"]

    def beat_switch(self, owner: str, backend: int) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_backends SET switch_heartbeat = ? WHERE backend = ? AND switcher = ?",
                         (time.time(), backend, owner))

    def finish_switch(self, owner: str, label: str, backend: int) -> None:
        now = time.time()
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_backends SET runtime = ?, target = NULL, switcher = NULL WHERE backend = ?",
                         (label, backend))
            self._add_lease(conn, owner, backend, label, now)

    def abort_switch(self, owner: str, backend: int) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_backends SET target = NULL, switcher = NULL WHERE backend = ? AND switcher = ?",
                         (backend, owner))

    def release(self, owner: str, backend: int) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_leases SET count = MAX(count - 1, 0) WHERE owner = ? AND backend = ?",
                         (owner, backend))

    def beat_leases(self, owner: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE comfy_leases SET heartbeat_at = ? WHERE owner = ?", (time.time(), owner))

    def loads(self) -> dict[int, int]:
        """Jobs holding each backend now (for /healthz and the status page)."""
        rows = self.db.read("SELECT backend, SUM(count) AS n FROM comfy_leases WHERE count > 0 AND heartbeat_at >= ?"
                            " GROUP BY backend", (time.time() - LEASE_SECONDS,))
        return {r["backend"]: r["n"] for r in rows}
