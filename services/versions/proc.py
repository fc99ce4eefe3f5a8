"""Running git and pip for an installer: output captured, children that die with it.

An installer killed with SIGKILL cannot stop its children, and an orphaned pip would go on
writing into a build folder the next installer is deleting: each child dies with the installer
(services/proc_death.py; the calling thread waits for the tool, so any thread may start it).
Credentials in URLs (`https://user:token@host`) are masked before any tool output reaches an
error detail or a log. The tools run without the appliance's secrets: pip executes the build
code of whatever a version requires.

`run` captures a quick tool's output; `stream` hands a long one's lines (pip installing torch
for minutes) to a callback as they come, so the user sees what it is doing.
"""
from __future__ import annotations

import collections
import os
import re
import subprocess
from pathlib import Path
from typing import Callable, Sequence

from services import secret_env
from services.proc_death import die_with_parent

_USERINFO = re.compile(r"(://)[^/@\s]+@")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # git's sideband leaves NULs and \r in its output
_TAIL_CHARS = 600


def _tool_env() -> dict[str, str]:
    return secret_env.env_for("installer", os.environ)


def mask(text: str) -> str:
    return _USERINFO.sub(r"\1***@", text)


class ToolFailed(Exception):
    """A tool exited non-zero; `tail` is the end of its output, credentials masked."""

    def __init__(self, returncode: int, tail: str):
        super().__init__(tail)
        self.returncode = returncode
        self.tail = tail


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float | None = None) -> str:
    """Run a tool to completion and return its stdout; raise ToolFailed with its last words."""
    try:
        done = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**_tool_env(), **(env or {})},
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              preexec_fn=die_with_parent())
    except subprocess.TimeoutExpired:
        raise ToolFailed(-1, f"{Path(str(cmd[0])).name} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ToolFailed(-1, f"cannot run {cmd[0]}: {exc.strerror}") from None
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        text = (done.stderr.decode("utf-8", "replace") or out).strip()
        raise ToolFailed(done.returncode, mask(_CONTROL.sub("", text[-_TAIL_CHARS:])))
    return out


def stream(cmd: Sequence[str | Path], on_line: Callable[[str], None]) -> None:
    """Run a tool to completion, passing each line of its output (stdout and stderr together,
    credentials masked) to `on_line`; raise ToolFailed with its last words."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    try:
        child = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, env=_tool_env(), preexec_fn=die_with_parent())
    except OSError as exc:
        raise ToolFailed(-1, f"cannot run {cmd[0]}: {exc.strerror}") from None
    with child:
        for raw in child.stdout:
            line = mask(_CONTROL.sub("", raw.decode("utf-8", "replace").rstrip()))
            if line:
                tail.append(line)
                on_line(line)
    if child.returncode != 0:
        raise ToolFailed(child.returncode, "\n".join(tail)[-_TAIL_CHARS:])
