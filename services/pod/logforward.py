"""supervisord event listener: copies every program's output lines to the container's stdout.

supervisord writes each program's output to its own rotated file; this listener receives the
same lines as PROCESS_LOG events and writes them to its stderr, which etc/supervisord.conf
points at supervisord's own stdout. Lines that are already JSON pass through; other lines
(ComfyUI's own output) are wrapped as JSON with the program's name.
"""
from __future__ import annotations

import json
import sys
import time

from supervisor import childutils


def _forward(headers: dict, payload: str) -> None:
    header_line, _, data = payload.partition("\n")
    fields = dict(part.split(":", 1) for part in header_line.split() if ":" in part)
    program = fields.get("processname", "?")
    for line in data.splitlines():
        if not line.strip():
            continue
        if line.startswith("{") and line.endswith("}"):
            sys.stderr.write(line + "\n")
        else:
            sys.stderr.write(json.dumps({"ts": round(time.time(), 3), "level": "info", "logger": program,
                                         "event": "output", "line": line}, ensure_ascii=False) + "\n")
    sys.stderr.flush()


def main() -> None:
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            if headers.get("eventname", "").startswith("PROCESS_LOG"):
                _forward(headers, payload)
        finally:
            childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
