"""A GPU fault of the running ComfyUI, latched until ComfyUI is restarted.

After a sticky CUDA error (services/gpu/faults.py) the ComfyUI process that met it can run no
more GPU work; only a new process, with a fresh CUDA context, can. So the fault is latched
where every Pod program sees it: the API worker whose job failed records it, /healthz (in each
API worker) reports it, and whoever restarts ComfyUI clears it. One JSON file in RUN_DIR,
replaced atomically like gpuwatch's snapshot: readers never see half of it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from services import atomic_file, logs

FILENAME = "gpu-fault.json"
MAX_REASON = 500  # a reason is a line for /healthz, not a log

log = logs.get("gpu.fault_latch")


def latch(run_dir: Path, reason: str) -> None:
    """Record the fault unless one is latched already: the first fault is the cause, and every
    later one on the same broken context is its echo."""
    if read(run_dir) is not None:
        return
    reason = " ".join(reason.split())[:MAX_REASON]
    atomic_file.write_text(run_dir / FILENAME, json.dumps({"reason": reason, "at": round(time.time(), 3)}))
    log.error("gpu_fault_latched", reason=reason)


def read(run_dir: Path) -> dict[str, Any] | None:
    """`{"reason", "at"}` (unix seconds) while a fault is latched, else None."""
    try:
        text = (run_dir / FILENAME).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:  # there but unreadable: still a latch, or a fault would go unseen
        return {"reason": f"unreadable {FILENAME}: {type(exc).__name__}", "at": None}
    try:
        entry = json.loads(text)
        return {"reason": str(entry["reason"]), "at": entry.get("at")}
    except (ValueError, TypeError, KeyError):
        return {"reason": f"malformed {FILENAME}", "at": None}


def clear(run_dir: Path) -> None:
    """Forget the fault: call it once a new ComfyUI process runs (a fresh CUDA context)."""
    try:
        (run_dir / FILENAME).unlink()
    except FileNotFoundError:
        return
    log.info("gpu_fault_cleared")
