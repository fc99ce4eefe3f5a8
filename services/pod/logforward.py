"""supervisord event listener: copies every program's output lines to the container's stdout.

supervisord writes each program's output to its own rotated file; this listener receives the
same lines as PROCESS_LOG events and writes them to its stderr, which etc/supervisord.conf
points at supervisord's own stdout. Lines that are already JSON pass through; other lines
(ComfyUI's own output) are wrapped as JSON with the program's name.

The listener protocol (READY, a header line, a payload of `len` bytes, RESULT) is spoken with
the standard library alone: supervisor.childutils would cost this always-on process 12 MB.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

from services.comfy import backends
from services.comfy.startup_log import PodComfyWatch


def _fields(line: str) -> dict[str, str]:
    return dict(part.split(":", 1) for part in line.split() if ":" in part)


def forward(payload: str, out=sys.stderr, on_line: Callable[[str, str, str], None] | None = None) -> None:
    """`on_line(program, pid, line)` also sees every line, blank ones included."""
    header_line, _, data = payload.partition("\n")
    header = _fields(header_line)
    program = header.get("processname", "?")
    for line in data.splitlines():
        if on_line is not None:
            on_line(program, header.get("pid", ""), line)
        if not line.strip():
            continue
        if line.startswith("{") and line.endswith("}"):
            out.write(line + "\n")
        else:
            out.write(json.dumps({"ts": round(time.time(), 3), "level": "info", "logger": program,
                                  "event": "output", "line": line}, ensure_ascii=False) + "\n")
    out.flush()


class ComfyWatches:
    """The start-up stages of every ComfyUI program (one per GPU: services/comfy/backends.py),
    each into the `comfyui` ledger in its own backend's run folder (PodComfyWatch)."""

    def __init__(self, run_dir: Path, plan: Callable[[], Mapping[str, backends.Backend]]):
        # Backend 0, the `comfyui` program, keeps its files in RUN_DIR as services.pod validated
        # and exported it: loading the settings here would cost this always-on process 10 MB.
        # `plan` (which does) runs only when a further backend's first line arrives.
        self._watches = {backends.PROGRAM: PodComfyWatch(run_dir)}
        self._plan = plan
        self._backends: Mapping[str, backends.Backend] | None = None

    def feed(self, program: str, pid: str, line: str) -> None:
        if not pid.isdigit():
            return
        watch = self._watches.get(program)
        if watch is None:
            if not program.startswith(backends.PROGRAM + "-"):
                return  # not a ComfyUI program
            if self._backends is None:
                self._backends = self._plan()
            backend = self._backends.get(program)
            if backend is None:
                return
            watch = self._watches[program] = PodComfyWatch(backend.run_dir)
        watch.feed(int(pid), line)


def pod_backends() -> dict[str, backends.Backend]:
    """The Pod's backends by program, planned as its ComfyUI programs planned them (this
    listener gets the same environment from supervisord)."""
    from services import config  # here: only a multi-GPU Pod pays for the settings

    return backends.by_program(backends.plan(config.Settings.from_env()))


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout
    # This listener is the one process that sees ComfyUI's own lines with their pid: it reads
    # their start-up stages from them (custom node import times, first model load; startup_ledger).
    watches = ComfyWatches(Path(os.environ["RUN_DIR"]), pod_backends)

    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = _fields(stdin.readline().decode())
        payload = stdin.read(int(header.get("len", 0))).decode("utf-8", "replace")
        try:
            if header.get("eventname", "").startswith("PROCESS_LOG"):
                forward(payload, on_line=watches.feed)
        finally:
            stdout.write("RESULT 2\nOK")
            stdout.flush()


if __name__ == "__main__":
    main()
