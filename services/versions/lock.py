"""The installers' lock: one installer (or remover) of a version at a time, across processes.

`flock` on `<root>/.<id>.lock`: the kernel drops it when its holder dies, even by SIGKILL,
so a killed installer never leaves the version locked. Callers re-check the installed state
after acquiring it (the other installer may have just finished the same work).

Known limit: on some network filesystems flock succeeds for everyone (huggingface_hub PR
#4228). This module is the one place to swap for services/models/locks.py (O_EXCL lock file
with owner and heartbeat) when that lands.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Iterator

from services import logs
from services.errors import AppError
from services.versions.layout import Layout

log = logs.get("versions.lock")

_POLL_S = 0.1
_LOG_EVERY_S = 10.0


@contextlib.contextmanager
def installer_lock(layout: Layout, timeout: float) -> Iterator[bool]:
    """Hold the version's lock; yields whether another holder made us wait."""
    layout.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.installer_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = _acquire(fd, layout, timeout)
        # The owner's pid, for a human looking at a stuck install.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield waited
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def _acquire(fd: int, layout: Layout, timeout: float) -> bool:
    start = time.monotonic()
    next_log = start
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return waited
        except BlockingIOError:
            waited = True
        now = time.monotonic()
        if now - start >= timeout:
            raise AppError("version_busy", f"another installer of {layout.version_id} held the lock "
                           f"for more than {timeout:g} s", suffix=layout.version_id)
        if now >= next_log:
            log.info("version_lock_wait", version_id=layout.version_id, waited_s=round(now - start, 1))
            next_log = now + _LOG_EVERY_S
        time.sleep(_POLL_S)


def is_held(layout: Layout) -> bool:
    """Whether an installer holds the version's lock right now."""
    try:
        fd = os.open(layout.installer_lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
