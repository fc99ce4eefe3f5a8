"""The model cache's size budget: MODEL_CACHE_MAX_BYTES, kept by evicting least recently used models.

`modelsync` calls `enforce` after each download and every EVICT_EVERY seconds. Past the budget
it deletes whole models, least recently used first (usage.py's stamps), until the cache fits,
and never one that is

- a model of an ACTIVE_VERSIONS version (modelsync would only fetch it again),
- held by a running job's lease (usage.InUse: from before the job verifies its models to its end),
- being downloaded or checked by a fetch: its lock file or a partial exists (locks.py).

A file hard-linked under several names (two versions naming one file) is one model: its bytes
count once, it is protected when any name is, and its names go together, or no disk is freed.
Each eviction takes the target's download lock and reads the leases again under it, so a job or
fetch starting meanwhile keeps it. A job that verifies in the instant between that read and the
unlink finds the model missing and fetches it again: slower, never wrong (an open file survives
its unlink). When the protected models alone pass the budget, nothing more can go: that is
logged once per enforcement, and the cache stays over budget until they are no longer needed.

Only the cache (`COMFY_CACHE_ROOT/models`) is budgeted: a separate MODELS_DIR is the operator's,
and quarantined files (`.quarantine/`) are left for a person to inspect.
"""
from __future__ import annotations

import os
import stat
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from services import counter_file, logs
from services.models import locks, usage
from services.errors import AppError
from services.models.cache import Target, cache_root

log = logs.get("models.budget")

EVICT_EVERY = 60.0  # seconds between enforcements while modelsync is idle
COUNT_FILE = "model-evictions-total"  # in RUN_DIR, for /metrics; only modelsync writes it


@dataclass
class Model:
    """One file in the cache: every name (hard link) of one inode."""
    size: int
    names: list[Target] = field(default_factory=list)
    last_used: float = 0.0


class _Busy(Exception):
    """Someone holds the target's lock: it is being downloaded or checked."""


def _busy() -> None:
    raise _Busy()


def scan(settings) -> list[Model]:
    root = cache_root(settings)
    models: dict[tuple[int, int], Model] = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                st = os.stat(path, follow_symlinks=False)
                target = Target.of(root, folder.name, path.name)
            except (OSError, AppError):  # gone, or a name no model has (litter: locks, partials)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            model = models.setdefault((st.st_dev, st.st_ino), Model(st.st_size))
            model.names.append(target)
            model.last_used = max(model.last_used, usage.last_used(settings, target.path, st))
    return list(models.values())


def _protected(model: Model, keep: set[str], *, locked: bool = False) -> bool:
    """Kept, or being fetched. `locked`: we hold the targets' locks, so a lock file proves nothing."""
    return any(os.path.abspath(t.path) in keep or t.partials() or (not locked and t.lock_path.exists())
               for t in model.names)


def enforce(settings, active: Iterable[Path], owner: str) -> list[Model]:
    """Evict until the cache fits MODEL_CACHE_MAX_BYTES (0: no budget); returns what went.

    `active`: the paths of the active versions' models."""
    limit = settings.model_cache_max_bytes
    if not limit:
        return []
    models = scan(settings)
    total = sum(m.size for m in models)
    if total <= limit:
        return []
    active = {os.path.abspath(p) for p in active}
    keep = active | usage.leased(settings, remove_dead=True)
    evicted = []
    for model in sorted(models, key=lambda m: m.last_used):
        if total <= limit:
            break
        if not _protected(model, keep) and _evict(settings, model, active, owner):
            total -= model.size
            evicted.append(model)
    if total > limit:
        log.warning("model_cache_over_budget", bytes=total, max_bytes=limit,
                    detail="the rest is protected: active versions, running jobs, downloads")
    return evicted


def _evict(settings, model: Model, active: set[str], owner: str) -> bool:
    try:
        with ExitStack() as held:
            for target in model.names:
                held.enter_context(locks.lock_for(target, settings, owner, _busy))
            # Under the locks: a job that took its lease since the scan keeps the model.
            if _protected(model, active | usage.leased(settings), locked=True):
                return False
            for target in model.names:
                target.path.unlink(missing_ok=True)
                usage.forget(settings, target.path)
    except _Busy:
        return False
    except OSError as exc:
        log.error("model_evict_failed", model=str(model.names[0].path), error=str(exc))
        return False
    log.info("model_evicted", model=[f"{t.type}/{t.name}" for t in model.names], bytes=model.size,
             last_used=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.last_used)))
    record(settings.run_dir)
    return True


def evictions(run_dir: Path) -> int:
    """Models evicted since RUN_DIR was made (a Prometheus counter may reset)."""
    return counter_file.read(run_dir / COUNT_FILE)


def record(run_dir: Path) -> None:
    counter_file.increment(run_dir / COUNT_FILE)
