"""How many times the `comfyui` program has started: a counter file in RUN_DIR for `/metrics`.

supervisord's process info tells when a program last started, not how often, and the back-off
history (services/comfy/backoff.py) is bounded and forgotten on a version switch. Only the
`comfyui` program writes this file (supervisord runs one at a time): services/counter_file.py.
"""
from __future__ import annotations

from pathlib import Path

from services import counter_file

FILENAME = "comfyui-starts-total"


def read(run_dir: Path) -> int:
    return counter_file.read(run_dir / FILENAME)


def record(run_dir: Path) -> None:
    counter_file.increment(run_dir / FILENAME)
