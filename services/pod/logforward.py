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
import sys
import time


def _fields(line: str) -> dict[str, str]:
    return dict(part.split(":", 1) for part in line.split() if ":" in part)


def forward(payload: str, out=sys.stderr) -> None:
    header_line, _, data = payload.partition("\n")
    program = _fields(header_line).get("processname", "?")
    for line in data.splitlines():
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
    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = _fields(stdin.readline().decode())
        payload = stdin.read(int(header.get("len", 0))).decode("utf-8", "replace")
        try:
            if header.get("eventname", "").startswith("PROCESS_LOG"):
                forward(payload)
        finally:
            stdout.write("RESULT 2\nOK")
            stdout.flush()


if __name__ == "__main__":
    main()
