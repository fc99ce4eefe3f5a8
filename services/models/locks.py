"""One download per target across processes and hosts, without trusting flock.

On Lustre, GPFS and some NFS mounts `flock(2)` succeeds for every caller (huggingface_hub
PR #4228), and a RunPod network volume is exactly such a place. So the lock is a file created
with `O_EXCL` (atomic on NFSv3+) holding its owner, and its mtime is a heartbeat refreshed by a
thread. A lock whose owner is dead is broken: on this host a vanished pid proves it at once,
from another host only a heartbeat older than `DOWNLOAD_LOCK_STALE` does.

For downloads the lock only saves bandwidth; correctness never depends on it. Each process
writes its own partial file and the target is re-checked after the lock is taken, so even two
processes that both "hold" the lock end with one whole, verified file (tests run that with
`DOWNLOAD_LOCKS=0`).

An owner token is `<host>~<pid>~<random>` with no dot, so it can sit inside file names
(cache.split_litter) and in the `owner` column of the downloads table.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from services import logs
from services.models.cache import LOCK, PARTIAL, Target, split_litter

log = logs.get("models.locks")

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def owner_token() -> str:
    return f"{_HOST}~{os.getpid()}~{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(owner: str, heartbeat_age: float, stale_after: float) -> bool:
    """Whether the process behind `owner` may still be working (a guess only for other hosts)."""
    if heartbeat_age > stale_after:
        return False
    host, _, rest = owner.partition("~")
    pid = rest.partition("~")[0]
    if host == _HOST and pid.isdigit():
        return _pid_alive(int(pid))
    return True


def _read_lock(path: Path) -> tuple[int, str]:
    """(inode, owner): both, because a freed inode number is soon given to a new file."""
    with open(path) as f:
        inode = os.fstat(f.fileno()).st_ino
        try:
            return inode, str(json.loads(f.read() or "{}").get("owner", ""))
        except (ValueError, AttributeError):
            return inode, ""  # being written right now, or garbage: only its age can tell


def _abandoned(owner: str, age: float, stale_after: float) -> bool:
    return not owner_alive(owner, age, stale_after) if owner else age > stale_after


def _age(path: Path) -> float:
    return time.time() - os.stat(path).st_mtime


class LockFile:
    """`with LockFile(path, owner, ...)`: waits (calling `on_wait` every poll) until the lock
    is ours. Not tied to models: anything that must not trust flock can hold one."""

    def __init__(self, path: Path, owner: str, stale_after: float, *,
                 on_wait: Callable[[], None] = lambda: None, poll: float = 0.2):
        self.path = Path(path)
        self.owner = owner
        self.stale_after = stale_after
        self.on_wait = on_wait
        self.poll = poll
        self._inode: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "LockFile":
        waited_since = time.monotonic()
        logged = waited_since
        while not self._try_create():
            if self._break_if_stale():
                continue
            if time.monotonic() - logged >= 10:
                logged = time.monotonic()
                log.info("download_lock_wait", lock=str(self.path), seconds=round(logged - waited_since))
            self.on_wait()
            time.sleep(self.poll)
        self._beat = threading.Thread(target=self._heartbeat, name="lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            if _read_lock(self.path) == (self._inode, self.owner):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as out:
            json.dump({"owner": self.owner, "since": time.time()}, out)
            self._inode = os.fstat(out.fileno()).st_ino
        return True

    def _break_if_stale(self) -> bool:
        try:
            judged = _read_lock(self.path)
            age = _age(self.path)
        except FileNotFoundError:
            return True
        owner = judged[1]
        if not _abandoned(owner, age, self.stale_after):
            return False
        # Rename, then check what was moved: two processes breaking the same stale lock must
        # not let the second one delete the fresh lock the first one has just created.
        grave = self.path.with_name(f"{self.path.name}.{self.owner}.stale")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return True
        if _read_lock(grave) != judged:
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
            os.unlink(grave)
            return False
        os.unlink(grave)
        log.warning("download_lock_broken", lock=str(self.path), owner=owner, age_s=round(age, 1))
        return True

    def _heartbeat(self) -> None:
        every = self.stale_after / 4
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                log.warning("download_lock_lost", lock=str(self.path))
                return


class NoLock:
    """`DOWNLOAD_LOCKS=0`: what a filesystem whose locks do nothing gives us."""

    def __enter__(self) -> "NoLock":
        return self

    def __exit__(self, *exc) -> None:
        pass


def lock_for(target: Target, settings, owner: str, on_wait: Callable[[], None]) -> LockFile | NoLock:
    if not settings.download_locks:
        return NoLock()
    return LockFile(target.lock_path, owner, settings.download_lock_stale, on_wait=on_wait)


def adopt_partial(target: Target, owner: str, stale_after: float) -> Path:
    """Our partial for `target`, taking over the largest one a dead process left (resume).

    The rename is atomic, so of two processes adopting the same partial one wins and the other
    starts its own; the other dead partials of the target are deleted.
    """
    mine = target.partial_path(owner)
    dead = []
    for path, other in target.partials().items():
        try:
            if path != mine and not owner_alive(other, _age(path), stale_after):
                dead.append((os.stat(path).st_size, path))
        except FileNotFoundError:
            continue
    dead.sort(reverse=True)
    if dead and not mine.exists():
        try:
            os.rename(dead[0][1], mine)
            log.info("download_partial_adopted", target=str(target.path), bytes=dead[0][0])
            dead = dead[1:]
        except FileNotFoundError:
            pass
    for _, path in dead:
        _unlink(path)
    return mine


def sweep(roots: Iterable[Path], wanted: set[Path], stale_after: float) -> int:
    """Delete the locks and leftovers of dead processes; keep partials of wanted targets.

    Run when `modelsync` starts: a partial of a target still wanted is resumed later (and
    adopted then), any other one is only taking disk space. Returns how many files went.
    """
    removed = 0
    for root in roots:
        if not Path(root).is_dir():
            continue
        for folder in Path(root).iterdir():
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for path in folder.iterdir():
                if _stale_litter(path, wanted, stale_after):
                    removed += _unlink(path)
    if removed:
        log.info("download_sweep", removed=removed)
    return removed


def _stale_litter(path: Path, wanted: set[Path], stale_after: float) -> bool:
    name = path.name
    try:
        if name.startswith(".") and name.endswith(LOCK):
            return _abandoned(_read_lock(path)[1], _age(path), stale_after)
        parsed = split_litter(name)
        if parsed is None or owner_alive(parsed[1], _age(path), stale_after):
            return False
        target = path.with_name(parsed[0])
        return parsed[2] != PARTIAL or target not in wanted or target.exists()
    except FileNotFoundError:
        return False


def _unlink(path: Path) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0
