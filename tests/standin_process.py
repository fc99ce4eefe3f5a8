"""Start the ComfyUI stand-in (tests/comfy_standin) as a real subprocess for a test.

    proc = start_standin(tmp_path)           # returns once it answers HTTP
    requests.get(proc.url + "/queue")
    proc.stop()                              # SIGTERM, then SIGKILL; returns the exit code

Folders live under `tmp_path/comfy`: output/, input/, temp/ and models/<folder>/, i.e.
the layout of a ComfyUI home. Its stdout and stderr go to `tmp_path/comfy/standin.log`
(read with `.log()`), so a chatty process can never block on a full pipe.

To test a launcher that runs `python COMFY_HOME/main.py ...`, `write_fake_comfy_home(dir)`
puts a main.py there that runs the stand-in with the launcher's argv, rooted at that dir.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class StandinProcess:
    proc: subprocess.Popen
    port: int
    base_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        return stop_process(self.proc, timeout)


def stop_process(proc: subprocess.Popen, timeout: float) -> int:
    """Ask it to stop (SIGTERM); kill it if it has not exited after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_answering(handle: StandinProcess, what: str, timeout: float, poll: float) -> StandinProcess:
    """Return once `/prompt` answers; fail at once if the process exits, or after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if handle.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {handle.proc.returncode} before answering:\n{handle.log()[-3000:]}")
        try:
            with urllib.request.urlopen(handle.url + "/prompt", timeout=1):
                return handle
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                handle.stop()
                raise TimeoutError(f"{what} did not answer within {timeout} s:\n{handle.log()[-3000:]}")
            time.sleep(poll)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def standin_command(base_dir: Path, port: int, *extra_args: str) -> list[str]:
    """The argv our launcher would give ComfyUI, pointed at the stand-in."""
    return [sys.executable, "-m", "tests.comfy_standin", "--listen", "127.0.0.1", "--port", str(port),
            "--output-directory", str(base_dir / "output"), "--input-directory", str(base_dir / "input"),
            "--temp-directory", str(base_dir), *extra_args]


def standin_env() -> dict[str, str]:
    """Environment in which `python -m tests.comfy_standin` is importable from any cwd."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


FAKE_MAIN = """\
# Written by tests/standin_process.py: runs the ComfyUI stand-in instead of ComfyUI.
import os
import sys

sys.path.insert(0, {repo!r})
from tests.comfy_standin.__main__ import main

# Like ComfyUI, keep models, input, output and temp next to main.py unless told otherwise.
sys.exit(main(["--base-directory", os.path.dirname(os.path.abspath(__file__)), *sys.argv[1:]]))
"""


def write_fake_comfy_home(comfy_home: Path) -> Path:
    """Make `comfy_home/main.py` start the stand-in; returns the path of main.py."""
    comfy_home.mkdir(parents=True, exist_ok=True)
    main_py = comfy_home / "main.py"
    main_py.write_text(FAKE_MAIN.format(repo=str(REPO_ROOT)))
    return main_py


def start_standin(tmp_path: Path, *extra_args: str, port: int | None = None,
                  ready_timeout: float = 20.0) -> StandinProcess:
    base_dir = Path(tmp_path) / "comfy"
    base_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = base_dir / "standin.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(standin_command(base_dir, port, *extra_args), cwd=REPO_ROOT,
                                env=standin_env(), stdout=log_file, stderr=subprocess.STDOUT)
    return wait_answering(StandinProcess(proc, port, base_dir, log_path), "stand-in", ready_timeout, 0.05)
