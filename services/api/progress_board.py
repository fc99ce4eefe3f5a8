"""The latest progress of each running Pod job, shared by the API workers.

One worker runs a job; any worker may answer `GET /jobs/{id}` or stream its events. The worker
running it posts its progress (percent, node, step) here: one small JSON file per running job in
RUN_DIR/progress, replaced atomically at most every MIN_INTERVAL seconds, removed when the job
ends. Files rather than the store: progress changes many times a second, and SQLite's single
writer belongs to the job rows.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from services import atomic_file
from services.comfy.client import Progress

MIN_INTERVAL = 0.25


class ProgressBoard:
    def __init__(self, run_dir: Path):
        self.folder = run_dir / "progress"
        self._posted: dict[str, float] = {}

    def _path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"  # job ids are checked names: no separator

    def post(self, job_id: str, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._posted.get(job_id, 0.0) < MIN_INTERVAL and progress.percent < 100:
            return
        self._posted[job_id] = now
        atomic_file.write_text(self._path(job_id), json.dumps({
            "percent": progress.percent, "node": progress.node, "step": progress.step, "steps": progress.steps}))

    def read(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(job_id).read_text())
        except (OSError, ValueError):
            return None

    def shows(self, job_id: str) -> bool:
        """Whether this board posted the job (its file exists)."""
        return job_id in self._posted

    def remove(self, job_id: str) -> None:
        """The job ended: its file goes, if this board wrote one (most quick jobs never have one)."""
        if self._posted.pop(job_id, None) is not None:
            self._path(job_id).unlink(missing_ok=True)
