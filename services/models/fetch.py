"""Making one model file present and verified: the only way bytes reach a model folder.

1. Take the target's lock, or join: wait while another process downloads the same target.
2. Re-check the target: whoever held the lock may have finished it (or, with a lock that did
   nothing, be finishing it right now).
3. Share: a verified file with the same sha256 elsewhere in the cache is hard-linked, so two
   versions naming one file under two names still keep one copy on disk.
4. Download into this process's own partial, adopting a dead process's partial to resume.
5. Check size and sha256, fsync, rename into place, fsync the folder, record in the index.

A wrong file is moved to quarantine: nothing unverified ever sits at the final path. A version's
model is authoritative, so a wrong file at its path is replaced; a `/download` replaces a
different file only when it was asked to (`replace=False` raises `model_exists` instead).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from services import logs
from services.errors import AppError
from services.models import downloader, locks, sources
from services.models.cache import Target, model_exists
from services.models.downloader import Progress
from services.models.index import HashIndex
from services.models.integrity import FileCheck, check_file

log = logs.get("models.fetch")


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str | None
    how: str  # present | linked | downloaded


def _keep_going(done: int, total: int | None) -> bool:
    return True


def ensure_model(target: Target, url: str, *, size: int | None, sha256: str | None, settings,
                 index: HashIndex, owner: str, on_progress: Progress = _keep_going,
                 stop: threading.Event | None = None, replace: bool = True) -> Fetched:
    """The target, present and verified; raises AppError (or downloader.Stopped)."""
    stop = stop or threading.Event()
    source = sources.open_source(url, settings)

    def waiting() -> None:
        if stop.is_set() or not on_progress(_largest_partial(target), size):
            raise downloader.Stopped()

    try:
        with locks.lock_for(target, settings, owner, waiting):
            found = check_file(index, target.path, size=size, sha256=sha256)
            if found.ok:
                return Fetched(target.path, found.size, found.sha256, "present")
            if found.status != "missing":
                if not replace:
                    raise model_exists(target)
                _quarantine(target, target.path, found)
            shared = _share(index, target, sha256)
            if shared:
                return shared
            partial = locks.adopt_partial(target, owner, settings.download_lock_stale)
            got_size, got_sha = _download_verified(source, target, partial, size, sha256, settings,
                                                   on_progress, stop)
            os.replace(partial, target.path)
            _fsync_dir(target.folder)
            index.record(target.path, os.stat(target.path), got_sha)
    except OSError as exc:  # the model folder cannot be written: read-only, not a folder, ...
        raise AppError("download_failed", f"cannot write {target.path}: {exc.strerror or exc}",
                       suffix="io") from None
    log.info("model_downloaded", path=str(target.path), bytes=got_size, source=source.public)
    return Fetched(target.path, got_size, got_sha, "downloaded")


def _download_verified(source, target: Target, partial: Path, size, sha256, settings, on_progress,
                       stop) -> tuple[int, str]:
    options = downloader.Options.from_settings(settings)
    while True:
        resumed = partial.exists()
        got_size, got_sha = downloader.download(source, partial, size=size, options=options,
                                                on_progress=on_progress, stop=stop)
        if sha256 is None or got_sha == sha256:
            return got_size, got_sha
        _quarantine(target, partial, FileCheck("checksum_mismatch", got_size, got_sha))
        if not resumed:
            raise AppError("checksum_mismatch", f"{source.public} gave sha256 {got_sha}, expected {sha256}",
                           extra={"expected": sha256, "got": got_sha})
        # The prefix a dead process left may itself be what was wrong: once more from zero.
        log.warning("model_resume_mismatch", path=str(target.path), source=source.public)


def _share(index: HashIndex, target: Target, sha256: str | None) -> Fetched | None:
    for other in index.find(sha256) if sha256 else ():
        try:
            st = os.stat(other)
            if other == target.path or index.lookup(other, st) != sha256:
                continue
            # link() creates the name atomically and only if it is free: no temporary needed.
            os.link(other, target.path)
        except OSError:
            continue  # gone, or another filesystem: download instead
        _fsync_dir(target.folder)
        index.record(target.path, os.stat(target.path), sha256)
        log.info("model_shared", path=str(target.path), same_as=str(other))
        return Fetched(target.path, st.st_size, sha256, "linked")
    return None


def _quarantine(target: Target, path: Path, found: FileCheck) -> None:
    tag = found.sha256 or f"size{found.size}"
    dest = target.quarantine_path(tag)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return
    log.warning("model_quarantined", path=str(target.path), moved_to=str(dest), status=found.status)


def _largest_partial(target: Target) -> int:
    sizes = []
    for path in target.partials():
        try:
            sizes.append(os.stat(path).st_size)
        except FileNotFoundError:
            continue
    return max(sizes, default=0)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
