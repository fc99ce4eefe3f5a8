"""Why the `comfyui` program could not start ComfyUI, kept for /healthz.

supervisord only knows that the program "Exited too quickly"; the program knows the reason
(`comfy_init_failed:no_comfy_home: COMFY_HOME /x does not exist`). It records that line before
it exits and clears it once its checks pass; /healthz shows it while ComfyUI is down. One line
in a file in RUN_DIR, replaced atomically, like gpuwatch's snapshot: readers never see half of
it, and the volume's database needs no new column.
"""
from __future__ import annotations

from pathlib import Path

from services import atomic_file
from services.errors import CATALOGUE, AppError

FILENAME = "comfy-start-failure.txt"


def record(run_dir: Path, reason: str) -> None:
    # One line, whatever a tool's output put in the detail.
    atomic_file.write_text(run_dir / FILENAME, " ".join(reason.split()))


def clear(run_dir: Path) -> None:
    (run_dir / FILENAME).unlink(missing_ok=True)


def read(run_dir: Path) -> str | None:
    try:
        return (run_dir / FILENAME).read_text() or None
    except OSError:
        return None


def as_error(line: str) -> AppError:
    """The recorded line (`<code>: <detail>`) as the error a job waiting for ComfyUI gets."""
    code, _, detail = line.partition(": ")
    prefix, _, suffix = code.partition(":")
    if prefix not in CATALOGUE:
        return AppError("comfy_init_failed", line, suffix="exited")
    return AppError(prefix, detail, suffix=suffix or None)
