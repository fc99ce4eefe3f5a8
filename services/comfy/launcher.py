"""Starting and stopping ComfyUI as a child process on loopback.

The launcher owns one ComfyUI process: it writes the extra_model_paths file that wires in the
model folders, spawns `COMFY_PYTHON COMFY_HOME/main.py` in its own process group (so stopping
it also stops anything it spawned) and dies with this process, even one killed with SIGKILL
(services/proc_death.py), waits until it answers, and stops it with SIGTERM then SIGKILL.
Every way start-up can fail ends in `comfy_init_failed:<reason>` carrying the tail of ComfyUI's
log; the wait ends as soon as the process exits instead of sleeping out a fixed timeout
(worker-comfyui#125: a hard 25 s wait failed slow cold starts).
"""
from __future__ import annotations

import collections
import enum
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from services import atomic_file, logs, proc_death, secret_env
from services.errors import AppError
from services.gpu import device
from services.model_types import ALIASES, CANONICAL

log = logs.get("comfy.launcher")

_TAIL_LINES = 60
# An idle ComfyUI answers /prompt in milliseconds; one silent this long before a job is frozen.
UNRESPONSIVE_SECONDS = 10.0


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    DEFUNCT = "defunct"   # exited or failed to start; start() may be called again
    STOPPED = "stopped"


_ALLOWED = {
    State.NEW: {State.STARTING, State.DEFUNCT},
    State.STARTING: {State.READY, State.DEFUNCT, State.STOPPED},
    State.READY: {State.DEFUNCT, State.STOPPED},
    State.DEFUNCT: {State.STARTING, State.DEFUNCT, State.STOPPED},
    State.STOPPED: {State.STARTING, State.DEFUNCT, State.STOPPED},
}


class InvalidStateError(RuntimeError):
    pass


def write_extra_model_paths(path: Path, model_roots: Sequence[Path]) -> Path:
    """One section per model root; ComfyUI searches them in order (first root is the default)."""
    sections = {}
    seen = []
    for root in model_roots:
        root = Path(root).resolve()
        if root in seen:
            continue
        seen.append(root)
        section = {"base_path": str(root)}
        if len(seen) == 1:
            section["is_default"] = True
        legacy = {canon: [alias for alias, c in ALIASES.items() if c == canon] for canon in CANONICAL}
        for folder in CANONICAL:
            section[folder] = "\n".join([folder, *legacy[folder]])
        sections[f"appliance_{len(seen)}"] = section
    # JSON is valid YAML, which spares the launcher a YAML dependency.
    atomic_file.write_text(path, json.dumps(sections, indent=2))
    return path


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR like aiohttp's listener: only a live listener makes bind fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


# What ComfyUI writes (outputs, previews, its user folder) belongs to jobs: this user's only.
CHILD_UMASK = 0o077


def child_env() -> dict[str, str]:
    """ComfyUI's environment: no secret, since its custom nodes are third-party code
    (services/secret_env.py), and unbuffered output for the log."""
    return {**secret_env.env_for("comfyui", os.environ), "PYTHONUNBUFFERED": "1"}


class ComfyLauncher:
    def __init__(self, *, comfy_home: Path, python: Path, host: str, port: int,
                 io_dir: Path, run_dir: Path, model_roots: Sequence[Path],
                 extra_args: Sequence[str] = (), line_sink: Callable[[str], None] | None = None,
                 temp_name: str | None = None):
        self.comfy_home = Path(comfy_home)
        self.python = Path(python)
        self.host, self.port = host, port
        self.io_dir, self.run_dir = Path(io_dir), Path(run_dir)
        # ComfyUI's temp folder is `<--temp-directory>/temp` and emptied at its start: a second
        # ComfyUI on the same folders gets its own (services/comfy/backends.py).
        self.temp_root = self.io_dir / temp_name if temp_name else self.io_dir
        self.model_roots = list(model_roots)
        self.extra_args = list(extra_args)
        self._sink = line_sink
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._proc: subprocess.Popen | None = None
        self._state = State.NEW
        self._lock = threading.RLock()
        self.last_error: AppError | None = None
        self.started_at: float | None = None

    @classmethod
    def from_settings(cls, settings, *, comfy_home: Path | None = None, python: Path | None = None,
                      extra_args: Sequence[str] = (), line_sink: Callable[[str], None] | None = None,
                      temp_name: str | None = None) -> "ComfyLauncher":
        roots = [settings.comfy_cache_root / "models", settings.models_dir]
        args = device.comfy_args([*settings.comfy_extra_args, *extra_args], settings.comfy_cpu)
        return cls(comfy_home=comfy_home or settings.comfy_home, python=python or settings.comfy_python,
                   host=settings.comfy_host, port=settings.comfy_port, io_dir=settings.comfy_io_dir,
                   run_dir=settings.run_dir, model_roots=roots, extra_args=args, line_sink=line_sink,
                   temp_name=temp_name)

    # ---- state ------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    def _to(self, new: State) -> None:
        with self._lock:
            if new not in _ALLOWED[self._state]:
                raise InvalidStateError(f"ComfyUI launcher cannot go from {self._state.value} to {new.value}")
            self._state = new

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._tail)[-lines:])

    # ---- start ------------------------------------------------------------------------
    def command(self) -> list[str]:
        io = self.io_dir
        return [str(self.python), "-u", str(self.comfy_home / "main.py"),
                "--listen", self.host, "--port", str(self.port),
                "--extra-model-paths-config", str(self.run_dir / "extra_model_paths.yaml"),
                "--output-directory", str(io / "output"), "--input-directory", str(io / "input"),
                "--temp-directory", str(self.temp_root), "--user-directory", str(io / "user"),
                "--disable-auto-launch", *self.extra_args]

    def _fail(self, reason: str, detail: str) -> AppError:
        tail = self.log_tail()
        error = AppError("comfy_init_failed", detail, suffix=reason,
                         extra={"log_tail": tail} if tail else None)
        self.last_error = error
        with self._lock:
            self._state = State.DEFUNCT
        log.error("comfy_init_failed", reason=reason, detail=detail)
        return error

    def prepare(self) -> list[str]:
        """Check what can be checked before spawning, write the config files; returns the argv."""
        if not self.comfy_home.is_dir():
            raise self._fail("no_comfy_home", f"COMFY_HOME {self.comfy_home} does not exist")
        if not (self.comfy_home / "main.py").is_file():
            raise self._fail("no_main_py", f"no main.py in COMFY_HOME {self.comfy_home}")
        if port_in_use(self.host, self.port):
            raise self._fail("port_in_use", f"{self.host}:{self.port} is already taken by another process")
        for folder in (self.io_dir / "output", self.io_dir / "input", self.temp_root / "temp", self.io_dir / "user"):
            folder.mkdir(parents=True, exist_ok=True)
        for root in self.model_roots:
            Path(root).mkdir(parents=True, exist_ok=True)
        write_extra_model_paths(self.run_dir / "extra_model_paths.yaml", self.model_roots)
        return self.command()

    def start(self) -> None:
        """Spawn ComfyUI (non-blocking). Raises comfy_init_failed for what is known up front."""
        with self._lock:
            if self.is_alive():
                return
            self._to(State.STARTING)
        argv = self.prepare()
        self._tail.clear()
        try:
            # Forked by proc_death's long-lived thread: start() runs on worker threads
            # (asyncio.to_thread), and the parent-death signal fires when the forking thread ends.
            self._proc = proc_death.spawn(
                argv, cwd=self.comfy_home, env=child_env(), stdin=subprocess.DEVNULL, umask=CHILD_UMASK,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise self._fail("exited", f"could not execute {self.python}: {exc.strerror}") from None
        self.started_at = time.monotonic()
        threading.Thread(target=self._pump, args=(self._proc,), name="comfy-log", daemon=True).start()
        log.info("comfy_starting", pid=self._proc.pid, port=self.port, comfy_home=str(self.comfy_home))

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self._tail.append(line)
            if self._sink:
                self._sink(line)

    def wait_ready(self, timeout: float) -> None:
        """Block until ComfyUI answers; fail fast when it exits."""
        deadline = time.monotonic() + timeout
        proc = self._proc
        if proc is None:
            raise self.last_error or self._fail("exited", "ComfyUI was never started")
        while True:
            code = proc.poll()
            if code is not None:
                time.sleep(0.05)  # let the pump read the last lines
                raise self._fail(self._exit_reason(), f"ComfyUI exited with status {code} before it answered")
            if self._answers():
                with self._lock:
                    if self._state == State.STARTING:
                        self._to(State.READY)
                log.info("comfy_ready", pid=proc.pid, seconds=round(time.monotonic() - (self.started_at or 0), 2))
                return
            if time.monotonic() >= deadline:
                self._kill_group(proc, grace=5)
                raise self._fail("timeout", f"ComfyUI did not answer within {timeout:g} s")
            time.sleep(0.1)

    def _exit_reason(self) -> str:
        tail = self.log_tail(_TAIL_LINES).lower()
        if "address already in use" in tail or "errno 98" in tail:
            return "port_in_use"
        if "modulenotfounderror" in tail or "importerror" in tail:
            return "import_error"
        return "exited"

    def _answers(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/prompt", timeout=timeout) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def ensure_running(self, timeout: float) -> None:
        """Start if not running, then wait until ready (used before each job). A ComfyUI that
        stopped answering while idle (frozen, deadlocked) is replaced rather than handed out."""
        with self._lock:
            if self.is_alive() and self._state == State.READY:
                if self._answers(timeout=UNRESPONSIVE_SECONDS):
                    return
                log.warning("comfy_unresponsive_killed", pid=self.pid, seconds=UNRESPONSIVE_SECONDS)
                self.kill()
            if not self.is_alive():
                if self._state in (State.READY, State.STARTING):
                    self._to(State.DEFUNCT)
                self.start()
        self.wait_ready(timeout)

    def mark_defunct(self) -> None:
        """A job saw ComfyUI fail. A process that is alive but no longer answers is wedged:
        kill it, so the next job starts a fresh one instead of waiting on it."""
        proc = self._proc
        if proc is not None and proc.poll() is None and not self._answers():
            log.warning("comfy_wedged_killed", pid=proc.pid)
            self._kill_group(proc, grace=2)
        with self._lock:
            if not self.is_alive() and self._state in (State.READY, State.STARTING):
                self._state = State.DEFUNCT

    def kill(self, min_age: float = 0.0) -> None:
        """Kill a stuck ComfyUI now (SIGKILL to its group: a frozen process ignores SIGTERM) and
        leave it DEFUNCT, so the next `ensure_running` starts a fresh one. Only a process that
        has run `min_age` seconds: a younger one is already a restart."""
        proc = self._proc
        if proc is not None and time.monotonic() - (self.started_at or 0) < min_age:
            return
        if proc is not None and proc.poll() is None:
            self._kill_group(proc, grace=0)
            log.warning("comfy_killed", pid=proc.pid, status=proc.returncode)
        with self._lock:
            if self._state in (State.READY, State.STARTING):
                self._state = State.DEFUNCT

    # ---- stop -------------------------------------------------------------------------
    def stop(self, grace: float = 10.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        code = self._kill_group(proc, grace)
        with self._lock:
            self._state = State.STOPPED
        log.info("comfy_stopped", pid=proc.pid, status=code)
        return code

    @staticmethod
    def _kill_group(proc: subprocess.Popen, grace: float) -> int | None:
        """SIGTERM the whole group, wait `grace`, then SIGKILL; returns the exit status."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                log.warning("comfy_stop_escalating", pid=proc.pid, signal=sig.name)
        return proc.poll()


def json_line_sink(stream=None) -> Callable[[str], None]:
    """ComfyUI's own output re-emitted as our JSON log lines (one object per line)."""
    out = stream or sys.stderr
    lock = threading.Lock()

    def sink(line: str) -> None:
        if not line:
            return
        with lock:
            out.write(json.dumps({"ts": round(time.time(), 3), "level": "info", "logger": "comfyui",
                                  "event": "output", "line": line}, ensure_ascii=False) + "\n")
            out.flush()

    return sink
