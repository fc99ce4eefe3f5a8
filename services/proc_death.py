"""Children that die with this process, even when it is killed with SIGKILL.

A process killed outright runs no cleanup, so the kernel must end its children:
PR_SET_PDEATHSIG (set in the child between fork and exec) has it SIGKILL the child when the
parent dies. The catch: the kernel's "parent" is the *thread* that forked, not the process.
A child forked from a worker thread (asyncio.to_thread, a ThreadPoolExecutor) would be killed
as soon as that thread ends, while this process lives on. So a child that must outlive the
call that started it (ComfyUI) is forked by `spawn`, on one daemon thread that lives as long as
the process; a tool that the calling thread waits for (git, pip) may be forked anywhere with
`die_with_parent()` as its preexec_fn.

Linux only: elsewhere the children may outlive a killed parent.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import signal
import subprocess
import threading
from typing import Any, Callable

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn that makes the child die (SIGKILL) when the forking thread ends."""
    parent = os.getpid()

    def preexec() -> None:
        if _prctl is None:
            return
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def become_subreaper() -> bool:
    """Adopt the orphans of this process's descendants (PR_SET_CHILD_SUBREAPER), as the test
    suite does to find what its processes leave behind. False where unsupported."""
    return _prctl is not None and _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0


_requests: queue.SimpleQueue = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A forked child has no spawner thread, and the queue and lock may be held by threads that
    # did not come along: start afresh.
    global _requests, _spawner, _spawner_lock
    _requests, _spawner, _spawner_lock = queue.SimpleQueue(), None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def spawn(args: Any, **popen_kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(args, **popen_kwargs)` for a child that may outlive the calling
    thread and dies with this process."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            # A daemon thread blocked on its queue never ends before the process does, so
            # its children's parent-death signal fires only when the process dies.
            _spawner = threading.Thread(target=_serve, name="proc-spawner", daemon=True)
            _spawner.start()
    done: concurrent.futures.Future = concurrent.futures.Future()
    _requests.put((done, args, popen_kwargs))
    return done.result()


def _serve() -> None:
    while True:
        done, args, popen_kwargs = _requests.get()
        try:
            done.set_result(subprocess.Popen(args, preexec_fn=die_with_parent(), **popen_kwargs))
        except Exception as exc:  # the caller raises it (OSError: no such executable)
            done.set_exception(exc)
