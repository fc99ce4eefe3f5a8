"""What ComfyUI's own output says about its start, for the start-up ledger (services/startup_ledger.py).

Fed ComfyUI's lines one by one (the serverless launcher's line sink; Pod mode's log forwarder,
which sees the `comfyui` program's lines from supervisord), it recognises the lines ComfyUI
0.3.x prints (nodes.py, server.py, model_management.py, model_patcher.py, main.py):

    Import times for custom nodes:
       0.1 seconds: /ComfyUI/custom_nodes/websocket_image_save.py
       2.4 seconds (IMPORT FAILED): /ComfyUI/custom_nodes/broken_node
    <blank line>
    To see the GUI go to: http://127.0.0.1:8188
    Requested to load SD1ClipModel
    loaded completely 9.5367431640625e+25 235.84423828125 True      (or "loaded partially …")
    Prompt executed in 2.90 seconds

Parsing is best effort: a line in another format is simply not recognised.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from services import startup_ledger

_IMPORT_HEADER = "Import times for custom nodes:"
_IMPORT_LINE = re.compile(r"\s*(\d+(?:\.\d+)?) seconds( \(IMPORT FAILED\))?: (.+)")
_REQUESTED = re.compile(r"Requested to load (\S+)")


class StartupLog:
    """One ComfyUI process's output; `feed` returns the ledger stages a line completes, as
    `(stage, fields)` pairs, each stage once (the first model load, the first prompt)."""

    def __init__(self) -> None:
        self._imports: list[dict[str, Any]] | None = None  # inside the import-times block
        self._requested: str | None = None
        self._seen: set[str] = set()

    def feed(self, line: str) -> list[tuple[str, dict[str, Any]]]:
        found = [(stage, fields) for stage, fields in self._parse(line) if stage not in self._seen]
        self._seen.update(stage for stage, _ in found)
        return found

    def _parse(self, line: str) -> list[tuple[str, dict[str, Any]]]:
        found: list[tuple[str, dict[str, Any]]] = []
        if self._imports is not None:
            match = _IMPORT_LINE.fullmatch(line)
            if match:
                self._imports.append({"path": match[3].strip(), "seconds": float(match[1]),
                                      "failed": bool(match[2])})
                return found
            # The block ends at ComfyUI's blank line (or whatever comes next, when a forwarder
            # dropped blank lines).
            found.append(("custom_nodes_imported", {"custom_nodes": self._imports}))
            self._imports = None
        text = line.strip()
        if text == _IMPORT_HEADER:
            self._imports = []
        elif text.startswith("To see the GUI go to:"):
            found.append(("comfy_listening", {}))
        elif match := _REQUESTED.match(text):
            self._requested = match[1]
        elif text.startswith(("loaded completely", "loaded partially")):
            found.append(("first_model_loaded", {"first_model": self._requested} if self._requested else {}))
        elif text.startswith("Prompt executed in"):
            found.append(("first_prompt_executed", {}))
        return found


class PodComfyWatch:
    """Pod mode: the `comfyui` program's lines, as supervisord hands them to the log forwarder
    with the pid, into that ComfyUI's ledger (which services.comfyexec wrote before its exec)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._pid: int | None = None
        self._log = StartupLog()

    def feed(self, pid: int, line: str) -> None:
        if pid != self._pid:  # a restarted ComfyUI: a new start to read
            self._pid, self._log = pid, StartupLog()
        for stage, fields in self._log.feed(line):
            try:
                startup_ledger.mark_for(self.run_dir, "comfyui", pid, stage, **fields)
            except OSError:
                pass  # a full disk costs a ledger stage, never the log forwarding
