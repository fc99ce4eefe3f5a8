"""A count kept in a small file in RUN_DIR, for counters Prometheus reads across processes
(`comfyui` starts, model evictions). One writer per file at a time (the program that counts),
so read-increment-replace is enough; readers see the old number or the new, never half."""
from __future__ import annotations

from pathlib import Path

from services import atomic_file


def read(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def increment(path: Path) -> None:
    atomic_file.write_text(path, str(read(path) + 1))
