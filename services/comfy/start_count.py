"""How many times the `comfyui` program has started: a counter file in RUN_DIR for `/metrics`.

supervisord's process info tells when a program last started, not how often, and the back-off
history (services/comfy/backoff.py) is bounded and forgotten on a version switch. Only the
`comfyui` program writes this file (supervisord runs one at a time), so a plain
read-increment-replace is enough; readers see the old or the new number, never half a file.
"""
from __future__ import annotations

from pathlib import Path

from services import atomic_file

FILENAME = "comfyui-starts-total"


def read(run_dir: Path) -> int:
    try:
        return int((run_dir / FILENAME).read_text())
    except (OSError, ValueError):
        return 0


def record(run_dir: Path) -> None:
    atomic_file.write_text(run_dir / FILENAME, str(read(run_dir) + 1))
