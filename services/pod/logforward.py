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
from typing import Callable

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


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout
    # This listener is the one process that sees ComfyUI's own lines with its pid: it reads its
    # start-up stages from them (custom node import times, first model load; startup_ledger).
    # RUN_DIR as services.pod validated and exported it: loading the settings here would cost
    # this always-on process 8 MB.
    comfy_watch = PodComfyWatch(Path(os.environ["RUN_DIR"]))

    def watch(program: str, pid: str, line: str) -> None:
        if program == "comfyui" and pid.isdigit():
            comfy_watch.feed(int(pid), line)

    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = _fields(stdin.readline().decode())
        payload = stdin.read(int(header.get("len", 0))).decode("utf-8", "replace")
        try:
            if header.get("eventname", "").startswith("PROCESS_LOG"):
                forward(payload, on_line=watch)
        finally:
            stdout.write("RESULT 2\nOK")
            stdout.flush()


if __name__ == "__main__":
    main()
