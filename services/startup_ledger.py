"""The start-up ledger: when each stage of a program's start was reached, in seconds since its
process began, so a slow cold start can be read stage by stage.

"Since its process began" is the kernel's create time of the process (psutil), not the moment
our code first ran: interpreter start-up and imports are counted. Later stages add this
process's monotonic clock to that first interval, so a wall-clock step never bends them.

Pod mode: each program writes `RUN_DIR/startup-<program>.json` (atomically, services/atomic_file.py)
and /healthz shows them all. The `comfyui` program execs ComfyUI and so cannot mark what happens
after: other processes add those stages to its ledger through `mark_for`, which only touches the
ledger of the ComfyUI process they saw (by pid), once per stage. Serverless mode keeps one
ledger in memory (no RUN_DIR file) and reports it with the first job.

A RunPod FlashBoot restore resumes a process from a snapshot instead of starting it: its
stages were reached long before the job that now waits, and the ledger says `restored: true`
(see `restore_gap` for how it is told apart).
"""
from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from services import atomic_file

PREFIX = "startup-"
# A process whose clocks disagree by less than this was not frozen in a snapshot (NTP slews
# the wall clock by well under 1 %; the second term keeps a long-running worker from tripping).
RESTORE_MIN_GAP = 10.0
RESTORE_MAX_DRIFT = 0.01


def path_of(run_dir: Path, program: str) -> Path:
    return Path(run_dir) / f"{PREFIX}{program}.json"


def create_time(pid: int) -> float:
    """The process's start on the wall clock, read afresh (psutil caches it per Process object)."""
    import psutil  # here: the always-on log forwarder writes ledgers too and never needs it (~4 MB)

    return psutil.Process(pid).create_time()


def restore_gap(t0_wall: float, t0_mono: float, now_wall: float, now_mono: float,
                created_now: float) -> float:
    """Seconds this process seems to have spent frozen outside of time since `t0` (its first
    readings of both clocks, taken when its code began); about 0 for a process that ran all along.

    Two signs of a restore, whichever mechanism RunPod uses (it documents FlashBoot only as a
    faster cold start; it is reported to be a CRIU-style snapshot of the process tree):
    - the clocks parted: the wall clock counts the time the snapshot lay on disk, while
      CLOCK_MONOTONIC is the restored machine's (a VM snapshot does not advance it; another
      host's is unrelated to ours), so wall elapsed minus monotonic elapsed is far from 0;
    - the kernel task is younger than our own first reading: a restored process is a new task
      to the kernel (its create time is the restore), which no started process can be, since
      the task exists before any of its code runs.
    """
    drift = abs((now_wall - t0_wall) - (now_mono - t0_mono))
    return max(drift, created_now - t0_wall, 0.0)


def looks_restored(gap: float, elapsed: float) -> bool:
    return gap > max(RESTORE_MIN_GAP, RESTORE_MAX_DRIFT * elapsed)


class Ledger:
    """One program's own ledger. `run_dir` None keeps it in memory (serverless) until `persist`."""

    def __init__(self, program: str, run_dir: Path | None = None, *,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 created: Callable[[int], float] = create_time):
        self.program = program
        self.run_dir = Path(run_dir) if run_dir else None
        self.pid = os.getpid()
        self._clock, self._monotonic, self._created = clock, monotonic, created
        self._t0_wall, self._t0_mono = clock(), monotonic()
        self.created_at = min(created(self.pid), self._t0_wall)
        self._frozen = 0.0  # seconds spent in a snapshot, left out of stages marked after a restore
        self.data: dict[str, Any] = {"program": program, "pid": self.pid, "created_at": round(self.created_at, 3),
                                     "restored": False, "stages": [{"stage": "process_start", "seconds": 0.0}]}
        self._lock = threading.Lock()  # the log pump thread and the event loop both mark

    def seconds(self) -> float:
        before_our_code = self._t0_wall - self.created_at - self._frozen
        return round(before_our_code + self._monotonic() - self._t0_mono, 3)

    def check_restored(self) -> bool:
        """True the first time a restore is seen (then `restored` and `restore_gap_seconds` are
        set). Stages marked later leave the gap out: they count the time the process ran, as if
        it had started again at the restore, with its first interval (interpreter, imports)."""
        if self.data["restored"]:
            return False
        now_wall, now_mono = self._clock(), self._monotonic()
        gap = restore_gap(self._t0_wall, self._t0_mono, now_wall, now_mono, self._created(self.pid))
        if not looks_restored(gap, now_mono - self._t0_mono):
            return False
        with self._lock:
            self.data.update(restored=True, restore_gap_seconds=round(gap, 1))
            self._t0_wall, self._t0_mono, self._frozen = now_wall, now_mono, self._frozen + gap
        self._save()
        return True

    def mark(self, stage: str, **fields: Any) -> bool:
        """Record `stage` now, once: a stage already recorded keeps its first time. `fields` go
        to the ledger's top level (e.g. the first model's name)."""
        with self._lock:
            if any(s["stage"] == stage for s in self.data["stages"]):
                return False
            _insert(self.data["stages"], stage, self.seconds())
            self.data.update(fields)
        self._save()
        return True

    def persist(self, run_dir: Path) -> None:
        """Write to RUN_DIR from now on (once settings say where it is)."""
        self.run_dir = Path(run_dir)
        self._save()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.data))

    def _save(self) -> None:
        if self.run_dir is not None:
            with _locked(self.run_dir, self.program):
                atomic_file.write_text(path_of(self.run_dir, self.program), json.dumps(self.snapshot()))


def _insert(stages: list[dict[str, Any]], stage: str, seconds: float) -> None:
    # Kept in time order: marks from several processes may arrive slightly out of order.
    at = bisect.bisect_right([s["seconds"] for s in stages], seconds)
    stages.insert(at, {"stage": stage, "seconds": seconds})


@contextlib.contextmanager
def _locked(run_dir: Path, program: str) -> Iterator[None]:
    # Read-modify-write by several processes (API workers, the log forwarder) on one file.
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / f".{PREFIX}{program}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def mark_for(run_dir: Path, program: str, pid: int, stage: str, **fields: Any) -> bool:
    """Add `stage` (now) to the ledger of `program`'s process `pid`, written by another
    process. Nothing happens when the ledger belongs to another process (an older or newer
    ComfyUI) or already has the stage. Seconds come from the wall clock and the process's
    recorded create time: another process's monotonic clock is no use here."""
    path = path_of(run_dir, program)
    with _locked(Path(run_dir), program):
        data = _read(path)
        if data is None or data.get("pid") != pid or any(s["stage"] == stage for s in data["stages"]):
            return False
        _insert(data["stages"], stage, round(max(0.0, time.time() - data["created_at"]), 3))
        data.update(fields)
        atomic_file.write_text(path, json.dumps(data))
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("stages"), list) else None


def read_full(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every program's whole ledger (stages, pid, created_at, restored, custom_nodes, …)."""
    ledgers = {}
    for path in sorted(Path(run_dir).glob(f"{PREFIX}*.json")):
        data = _read(path)
        if data is not None:
            ledgers[path.name[len(PREFIX):-len(".json")]] = data
    return ledgers


def read_all(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Program name -> its stages in order, each `{"stage": str, "seconds": float}`."""
    return {program: [{"stage": s["stage"], "seconds": s["seconds"]} for s in data["stages"]]
            for program, data in read_full(run_dir).items()}
