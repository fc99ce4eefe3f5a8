"""Telling a frozen ComfyUI from a slow one, for a process that watches it from outside.

ComfyUI runs nodes on a worker thread and answers HTTP on its event loop, so a healthy ComfyUI
answers `/prompt` within milliseconds even in the middle of a long job. One that stops answering
is frozen (SIGSTOP, a deadlock holding the GIL, a driver call that never returns) and stays so:
Pod mode's supervisord only restarts a process that exits. This watch decides when to kill it:
after `hang_timeout` of silence once it has answered, or after `start_timeout` for a process
that never answered yet (ComfyUI may take minutes to import custom nodes and load torch).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HangWatch:
    hang_timeout: float
    start_timeout: float
    _pid: int | None = None
    _answered: bool = False
    _silent_since: float | None = None

    def observe(self, pid: int, answering: bool, now: float) -> bool:
        """One look at process `pid`; True when it should be killed."""
        if pid != self._pid:  # a new process: its start-up counts as silence
            self._pid, self._answered, self._silent_since = pid, False, now
        if answering:
            self._answered, self._silent_since = True, None
            return False
        if self._silent_since is None:
            self._silent_since = now
        limit = self.hang_timeout if self._answered else self.start_timeout
        return now - self._silent_since >= limit

    def silent_for(self, now: float) -> float:
        return 0.0 if self._silent_since is None else now - self._silent_since

    def forget(self) -> None:
        """The program is not running (stopped, restarting): nothing to watch."""
        self._pid = None
