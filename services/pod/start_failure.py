"""Why the `comfyui` program could not start ComfyUI, kept for /healthz.

supervisord only knows that the program "Exited too quickly"; the program knows the reason
(`comfy_init_failed:no_comfy_home: COMFY_HOME /x does not exist`). It records that line before
it exits and clears it once its checks pass; /healthz shows it while ComfyUI is down. One line
in a file in RUN_DIR, replaced atomically, like gpuwatch's snapshot: readers never see half of
it, and the volume's database needs no new column.
"""
from __future__ import annotations

import os
from pathlib import Path

FILENAME = "comfy-start-failure.txt"


def record(run_dir: Path, reason: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{FILENAME}.{os.getpid()}"
    tmp.write_text(" ".join(reason.split()))  # one line, whatever a tool's output put in the detail
    os.replace(tmp, run_dir / FILENAME)


def clear(run_dir: Path) -> None:
    (run_dir / FILENAME).unlink(missing_ok=True)


def read(run_dir: Path) -> str | None:
    try:
        return (run_dir / FILENAME).read_text() or None
    except OSError:
        return None
