"""Start Pod mode for real: `python -m services.pod` -> supervisord -> comfyui (the stand-in
behind a fake COMFY_HOME), api (gunicorn), modelsync, gpuwatch, logforward.

etc/ is copied into the test's folder so its `.run/` socket is private to the test; the
config itself is the shipped one, byte for byte.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.standin_process import REPO_ROOT, free_port, stop_process, write_fake_comfy_home

FIXTURES = REPO_ROOT / "tests" / "fixtures"


def fake_nvidia_smi(folder: Path, scenario: str = "idle") -> Path:
    """An nvidia-smi that prints the recorded H100 output of a scenario."""
    script = folder / "nvidia-smi"
    query = FIXTURES / "nvidia-smi" / f"h100-{scenario}-query.csv"
    apps = FIXTURES / "nvidia-smi" / f"h100-{scenario}-compute-apps.csv"
    script.write_text(f"#!/bin/sh\ncase \"$*\" in *compute-apps*) cat {apps};; *) cat {query};; esac\n")
    script.chmod(0o755)
    return script


@dataclass
class Pod:
    root: Path
    proc: subprocess.Popen
    api_port: int
    comfy_port: int
    env: dict
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "supervisord.conf"

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60)

    def pid(self, program: str) -> int:
        return int(self.ctl("pid", program).stdout.strip())

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def wait_healthy(self, timeout: float = 60, comfy_pid: int | None = None) -> dict:
        """/healthz answers 200; with `comfy_pid`, from a snapshot taken after that ComfyUI started
        (the snapshot is refreshed every second: one from before a kill still says ok)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                status, body = self.request("GET", "/healthz", timeout=2)
                last = body
                seen = (body.get("programs", {}).get("comfyui") or {}).get("pid") if isinstance(body, dict) else None
                if status == 200 and comfy_pid in (None, seen):
                    return body
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"pod not healthy in {timeout} s: {last}\n{self.log()[-4000:]}")

    def wait_running(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ctl("status").returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError(self.ctl("status").stdout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        return stop_process(self.proc, timeout)


def start_pod(root: Path, env: dict | None = None, comfy_home: str = "fake", wait: bool = True) -> Pod:
    """comfy_home: "fake" (the stand-in behind COMFY_HOME: developer mode), "missing" (COMFY_HOME
    names nothing) or "unset" (no COMFY_HOME: installed versions run)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO_ROOT / "etc", root / "etc", dirs_exist_ok=True)
    home = root / "ComfyUI"
    if comfy_home == "fake":
        write_fake_comfy_home(home)
    api_port, comfy_port = free_port(), free_port()
    full_env = {**os.environ, "DATA_ROOT": str(root / "data"), "COMFY_HOME": str(home),
                "COMFY_PORT": str(comfy_port), "API_PORT": str(api_port), "DEFAULT_VERSION_ID": "demo",
                "NVIDIA_SMI": str(fake_nvidia_smi(root)), "GPU_POLL_INTERVAL": "1",
                # The tests' model and workflow servers listen on loopback: opt in (env may override).
                "FETCH_ALLOW_HOSTS": "127.0.0.1 localhost",
                "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    if comfy_home == "unset":
        del full_env["COMFY_HOME"]
    log_path = root / "pod.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.pod", "--config", str(root / "etc" / "supervisord.conf")],
                                cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    pod = Pod(root, proc, api_port, comfy_port, full_env, log_path)
    if wait:
        try:
            pod.wait_running()
            pod.wait_healthy()
        except BaseException:
            pod.stop()
            raise
    return pod
