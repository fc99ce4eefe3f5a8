"""Which cached models are used: when each was last used, and which a running job holds now.

The cache budget (budget.py) evicts the least recently used models and never one a job needs,
so every process that runs jobs (Pod API workers, the serverless handler, the CLI) says so here;
`modelsync` only reads it. Both are files under the cache root, not rows in the store: the
serverless handler and the CLI have no store, and a file costs one syscall per model.

    .used/<type>/<name>     empty; its mtime is the model's last use (a verify or a job)
    .in_use/<owner>.json    a lease: the model paths a running job's version needs, from before
                            its models are verified until it ends; its mtime is a heartbeat

A lease counts while its owner lives: on this host while its pid does, from another host (a
shared network volume) while its heartbeat is younger than DOWNLOAD_LOCK_STALE (locks.py's rule).
A job that dies leaves a lease nobody honours, and `modelsync` deletes it.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from services import atomic_file, logs
from services.models import locks
from services.models.cache import Target, cache_root
from services.models.verify import targets_of
from services.versions.spec import ModelSpec

log = logs.get("models.usage")

USED = ".used"
IN_USE = ".in_use"


def _stamp(root: Path, path: Path) -> Path:
    return root / USED / path.parent.name / path.name


def touch(settings, paths: Iterable[Path]) -> None:
    """Record that these cached models were used now."""
    root = cache_root(settings)
    for path in paths:
        stamp = _stamp(root, Path(path))
        try:
            try:
                os.utime(stamp)
            except FileNotFoundError:
                stamp.parent.mkdir(parents=True, exist_ok=True)
                stamp.touch()
        except OSError:
            pass  # a read-only cache: the model only looks older to the budget, no job fails for it


def last_used(settings, path: Path, st: os.stat_result) -> float:
    """The model's last use: its stamp, or when the file was written if it was never used."""
    try:
        return max(os.stat(_stamp(cache_root(settings), path)).st_mtime, st.st_mtime)
    except FileNotFoundError:
        return st.st_mtime


def forget(settings, path: Path) -> None:
    _stamp(cache_root(settings), path).unlink(missing_ok=True)


class InUse:
    """`with InUse(settings, spec.models):` these models stay in the cache until the block ends."""

    def __init__(self, settings, models: Sequence[ModelSpec]):
        self.settings = settings
        self.paths = sorted(os.path.abspath(t.path) for t in targets_of(settings, models) if isinstance(t, Target))
        self.owner = locks.owner_token()
        self.path = cache_root(settings) / IN_USE / f"{self.owner}.json"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "InUse":
        if not self.paths:
            return self
        try:
            atomic_file.write_text(self.path, json.dumps({"owner": self.owner, "models": self.paths}))
        except OSError as exc:  # a read-only cache: nothing evicts there either
            log.warning("model_lease_failed", error=str(exc))
            return self
        self._beat = threading.Thread(target=self._heartbeat, name="model-lease", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._beat is not None:
            self._stop.set()
            self._beat.join()
            self.path.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.download_lock_stale / 4):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return  # removed as dead by a modelsync that misjudged us: nothing to refresh


def leased(settings, *, remove_dead: bool = False) -> set[str]:
    """The model paths (absolute) that live leases hold; with `remove_dead`, dead leases go."""
    held: set[str] = set()
    folder = cache_root(settings) / IN_USE
    if not folder.is_dir():
        return held
    stale = settings.download_lock_stale
    for lease in folder.glob("*.json"):
        try:
            age = time.time() - os.stat(lease).st_mtime
            models = json.loads(lease.read_text()).get("models", [])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError):
            models = None  # being written (atomic_file makes that rare) or garbage: only age decides
        if locks.owner_alive(lease.stem, age, stale):
            held.update(m for m in models or () if isinstance(m, str))
        elif remove_dead:
            lease.unlink(missing_ok=True)
    return held
