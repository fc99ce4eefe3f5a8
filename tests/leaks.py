"""Processes a test run leaves behind.

conftest.py makes pytest a child subreaper, so whatever the suite's processes orphan (a
ComfyUI whose worker died, a daemon's double-forked helpers) is re-parented to pytest instead
of init and stays visible. At the end every descendant still alive is a leak: it is named,
killed, and fails the run.
"""
from __future__ import annotations

import os
import time

import psutil


def leftovers(settle: float = 5.0) -> list[str]:
    """Describe, then kill, every living descendant of this process. Ones still on their way
    out (a Docker engine's shims after their `pkill`) get `settle` seconds to go first."""
    deadline = time.monotonic() + settle
    living = _living()
    while living and time.monotonic() < deadline:
        time.sleep(0.1)
        living = _living()
    described = [_describe(proc) for proc in living]
    for proc in living:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(living, timeout=5)
    _reap()
    return described


def gone(pid: int, timeout: float) -> bool:
    """Whether the process exits within `timeout` seconds. A zombie has exited: with pytest
    the subreaper, an orphan stays one until the end of the run (see `_reap`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _living() -> list[psutil.Process]:
    _reap()
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def _reap() -> None:
    """Collect exited children: orphans re-parented to pytest have no one else to wait for them.
    Only at the session's end: during it this would steal exit statuses from subprocess."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} (parent {proc.ppid()}): {' '.join(proc.cmdline())[:300]}"
    except psutil.Error:
        return f"pid {proc.pid}: exited while being described"
