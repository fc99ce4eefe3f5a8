"""A job's own folders in ComfyUI's input and output folders: private while it runs, gone after.

Uploads go to `<io>/input/jobs/<job_id>/` and save nodes write to `<io>/output/jobs/<job_id>/`
(services/jobs/workflow.py). ComfyUI writes those files itself, with its own umask, so the
folders are made 0700 before it writes and the files set to 0600 once written; after the result
is delivered (or the job failed) both folders are removed, at once or `JOB_FILES_RETENTION`
seconds later. A process that dies before that leaves them behind; `sweep()` removes job
folders older than any job can be (`JOB_TIMEOUT` + retention + a margin), so it never touches
one a running job still uses. Nothing happens where `<io>` is not ComfyUI's folder on this
machine (a ComfyUI reached through COMFY_URL keeps its own files).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

from services import logs
from services.jobs.file_inputs import JOBS_FOLDER

log = logs.get("jobs.files")

SWEEP_MARGIN_SECONDS = 600.0   # delivery (a GCS upload of a long video) after the job's timeout
SWEEP_EVERY_SECONDS = 60.0


class JobFiles:
    def __init__(self, io_dir: Path, retention: float, job_timeout: float):
        self.roots = (Path(io_dir) / "input", Path(io_dir) / "output")
        self.retention = retention
        self.horizon = job_timeout + retention + SWEEP_MARGIN_SECONDS
        self._last_sweep = 0.0

    @classmethod
    def from_settings(cls, settings) -> "JobFiles":
        return cls(settings.comfy_io_dir, settings.job_files_retention, settings.job_timeout)

    def folders(self, job_id: str, roots: tuple[Path, ...] | None = None) -> list[Path]:
        return [root / JOBS_FOLDER / job_id for root in roots or self.roots if root.is_dir()]

    def prepare(self, job_id: str, uploads: bool = True) -> None:
        """Create the job's folders 0700 (mkdir's mode is masked by the umask, hence the chmod).
        Without `uploads` only its output folder: nothing goes into its input folder."""
        for folder in self.folders(job_id, self.roots if uploads else self.roots[1:]):
            for path in (folder.parent, folder):
                path.mkdir(exist_ok=True)
                os.chmod(path, 0o700)

    def protect(self, job_id: str) -> None:
        """Files 0600 and folders 0700, whatever umask ComfyUI wrote them with."""
        for folder in self.folders(job_id):
            for dirpath, dirnames, filenames in os.walk(folder):
                _chmod(Path(dirpath), 0o700)
                for name in filenames:
                    _chmod(Path(dirpath) / name, 0o600)

    async def release(self, job_id: str) -> None:
        """The job is over: its files go now, or after the retention time (private meanwhile)."""
        if self.retention <= 0:
            await asyncio.to_thread(self.remove, job_id)
        else:
            await asyncio.to_thread(self.protect, job_id)
            loop = asyncio.get_running_loop()
            loop.call_later(self.retention, lambda: loop.run_in_executor(None, self.remove, job_id))
        if time.monotonic() - self._last_sweep >= SWEEP_EVERY_SECONDS:
            self._last_sweep = time.monotonic()
            await asyncio.to_thread(self.sweep)

    def remove(self, job_id: str) -> None:
        for folder in self.folders(job_id):
            shutil.rmtree(folder, ignore_errors=True)

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove job folders no job can still use (left by a process that died); returns their ids."""
        cutoff = (time.time() if now is None else now) - self.horizon
        removed = []
        for root in self.roots:
            jobs = root / JOBS_FOLDER
            for folder in (jobs.iterdir() if jobs.is_dir() else ()):
                if folder.is_dir() and _newest_mtime(folder) < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder.name)
        if removed:
            log.info("job_files_swept", folders=len(removed))
        return removed


def _chmod(path: Path, mode: int) -> None:
    if path.is_symlink():  # a link a node made is not ours to widen or narrow (Linux has no lchmod)
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("job_files_chmod_failed", error=type(exc).__name__)


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for dirpath, _, filenames in os.walk(folder):
        for name in [".", *filenames]:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, name), follow_symlinks=False).st_mtime)
            except OSError:
                pass
    return newest
