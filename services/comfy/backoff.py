"""Back-off for the `comfyui` program's restarts.

supervisord respawns a process that dies after `startsecs` at once, forever (Supervisor#1285),
so the program remembers its recent starts: consecutive runs shorter than a healthy one are a
crash loop and wait 2, 4, 8 ... 60 s before the next try. A restart asked for on purpose (a
version switch) forgets the history first, so switching stays fast.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

HEALTHY_RUN_SECONDS = 120.0
MAX_BACKOFF_SECONDS = 60.0
FILENAME = "comfyui-starts.json"


def next_delay(run_dir: Path) -> float:
    """Record a start now; returns the seconds to wait before it."""
    path = run_dir / FILENAME
    try:
        starts = json.loads(path.read_text())
    except (OSError, ValueError):
        starts = []
    times = starts + [time.time()]
    quick = 0
    for earlier, later in zip(reversed(times[:-1]), reversed(times[1:])):
        if later - earlier >= HEALTHY_RUN_SECONDS:
            break
        quick += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(times[-20:]))
    return 0.0 if quick < 2 else min(2.0 ** (quick - 1), MAX_BACKOFF_SECONDS)


def forget(run_dir: Path) -> None:
    (run_dir / FILENAME).unlink(missing_ok=True)
