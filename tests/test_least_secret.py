"""Least secret, read where an attacker would read it: `/proc/<pid>/environ` (the environment a
process was exec'd with, whatever it deleted afterwards) of every real program of a real Pod,
of the serverless worker's ComfyUI child, and of the git/pip runs of version installs."""
import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from nacl.public import PrivateKey

from services.config import REPO_ROOT
from services.versions import proc as tools
from tests.pod_process import start_pod
from tests.test_serverless import Handler
from tests.standin_process import free_port

SECRETS = {
    "API_TOKEN": "tok-api-1",
    "WORKER_PRIVATE_KEY_B64": base64.b64encode(bytes(PrivateKey.generate())).decode(),
    "HF_TOKEN": "hf_secret_2",
    "CIVITAI_TOKEN": "civitai-secret-3",
    "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/key.json",
    "RUNPOD_API_KEY": "rp-secret-4",
    "WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"webhook-secret-5" * 2).decode(),
    "AWS_ACCESS_KEY_ID": "AKIA-secret-6",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-7",
    "AWS_SESSION_TOKEN": "aws-session-8",
    "AWS_PROFILE": "aws-profile-9",
}
DOWNLOADS = {"HF_TOKEN", "CIVITAI_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS"}
UPLOADS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"}  # output_mode=s3
# The expected grants, written out here rather than read from services/secret_env.py: the test
# is the second opinion.
EXPECTED = {
    "supervisord": set(),
    "comfyui": set(),  # ComfyUI itself: the program execs it
    "gpuwatch": set(),
    "logforward": set(),
    "modelsync": DOWNLOADS,
    "api": {"API_TOKEN", "WORKER_PRIVATE_KEY_B64", "WEBHOOK_SECRET"} | DOWNLOADS | UPLOADS,
    "api worker": {"API_TOKEN", "WORKER_PRIVATE_KEY_B64", "WEBHOOK_SECRET"} | DOWNLOADS | UPLOADS,
}


def environ_of(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read()
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def secrets_of(pid: int) -> dict[str, str]:
    return {k: v for k, v in environ_of(pid).items() if k in SECRETS}


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("pod"), env=SECRETS)
    yield pod
    pod.stop()


def test_each_pod_program_is_execd_with_only_its_secrets(pod):
    deadline = time.monotonic() + 20
    while "STARTING" in pod.ctl("status").stdout:  # logforward and the others settle
        assert time.monotonic() < deadline
        time.sleep(0.2)
    pids = {"supervisord": pod.proc.pid}
    for program in ("comfyui", "gpuwatch", "logforward", "modelsync", "api"):
        pids[program] = pod.pid(program)
    workers = psutil.Process(pids["api"]).children()
    assert workers
    seen = {name: secrets_of(pid) for name, pid in pids.items()}
    seen["api worker"] = secrets_of(workers[0].pid)
    assert {name: set(found) for name, found in seen.items()} == EXPECTED
    for found in seen.values():  # the granted ones carry their real values
        assert all(SECRETS[k] == v for k, v in found.items())
    # ComfyUI is what the comfyui program became (exec), and nothing it started has more.
    comfy = psutil.Process(pids["comfyui"])
    assert "main.py" in " ".join(comfy.cmdline())
    assert all(not secrets_of(child.pid) for child in comfy.children(recursive=True))


def test_the_secrets_file_is_private_and_off_the_volume(pod):
    path = pod.root / ".run" / "secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == SECRETS
    # Nothing on the volume (DATA_ROOT: logs, run files, the database) holds a secret.
    written = [p for p in Path(pod.env["DATA_ROOT"]).rglob("*") if p.is_file()]
    assert written and not [p for p in written if any(v.encode() in p.read_bytes() for v in SECRETS.values())]


def test_grant_refuses_to_run_without_the_secrets_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_SECRETS_FILE"}
    proc = subprocess.run([sys.executable, "-m", "services.pod.grant", "api", "true"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "APPLIANCE_SECRETS_FILE" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "services.pod.grant", "api", "true"], cwd=REPO_ROOT,
                          env={**env, "APPLIANCE_SECRETS_FILE": str(tmp_path / "missing.json")},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "cannot read the secrets file" in proc.stderr


def test_the_comfyui_program_scrubs_even_what_it_was_given(tmp_path):
    """Started by hand with every secret in its environment, it still execs ComfyUI without."""
    home = tmp_path / "ComfyUI"
    home.mkdir()
    dump = tmp_path / "comfy-env.json"
    (home / "main.py").write_text(f"import json, os\njson.dump(dict(os.environ), open({str(dump)!r}, 'w'))\n")
    env = {**os.environ, **SECRETS, "DATA_ROOT": str(tmp_path / "data"), "COMFY_HOME": str(home),
           "COMFY_PORT": str(free_port()), "PYTHONPATH": str(REPO_ROOT), "LOG_SILENT": "1"}
    proc = subprocess.run([sys.executable, "-m", "services.comfyexec"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(dump.read_text())
    assert not set(seen) & set(SECRETS) and seen["PYTHONUNBUFFERED"] == "1"


def test_serverless_comfyui_child_gets_no_secret(tmp_path):
    h = Handler(tmp_path, env=SECRETS)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 30
        while not h.comfy_listening():  # warm-up starts ComfyUI with no job at all
            assert time.monotonic() < deadline
            time.sleep(0.1)
        children = psutil.Process(h.proc.pid).children(recursive=True)
        comfy = [c for c in children if "main.py" in " ".join(c.cmdline())]
        assert comfy
        assert {c.pid: secrets_of(c.pid) for c in children} == {c.pid: {} for c in children}
        assert set(secrets_of(h.proc.pid)) == set(SECRETS)  # the worker itself needs them
    finally:
        h.stop()
        # ComfyUI runs in its own session and can outlive a terminated worker: leave nothing.
        for child in children:
            if child.is_running():
                child.terminate()
        psutil.wait_procs(children, timeout=10)


def test_git_and_pip_of_version_installs_get_no_secret(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    seen = json.loads(tools.run([sys.executable, "-c", dump]))
    assert not set(seen) & set(SECRETS)
    lines = []
    tools.stream([sys.executable, "-c", dump], lines.append)
    assert not set(json.loads(lines[0])) & set(SECRETS)
