"""The image without a Docker engine: hadolint on the Dockerfile, the entrypoint's mode
selection run for real, and the Dockerfile's own version-bake command run against a
temporary root."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from services.config import REPO_ROOT
from tests import workflows
from tests.pod_process import Pod
from tests.standin_process import free_port, write_fake_comfy_home
from tests.versions_support import MAIN_PY, commit, file_url, write_spec

ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"


def entry(*args, env=None, timeout=90):
    full = {**os.environ, "APPLIANCE_PYTHON": sys.executable, "LOG_SILENT": "1", **(env or {})}
    full.pop("APPLIANCE_USER", None)
    return subprocess.run([str(ENTRYPOINT), *args], env=full, capture_output=True, text=True, timeout=timeout)


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_mode_by_argument():
    proc = entry("cli", "settings")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["APPLIANCE_PROFILE"] == "local"


def test_cli_mode_by_launch_mode_passes_arguments_through():
    proc = entry("run", "--help", env={"LAUNCH_MODE": "cli"})
    assert proc.returncode == 0 and "--workflow" in proc.stdout


def test_unknown_launch_mode_is_refused():
    proc = entry(env={"LAUNCH_MODE": "pod"})
    assert proc.returncode == 2 and "LAUNCH_MODE must be serverless, api or cli" in proc.stderr


@pytest.mark.parametrize("args,env", [
    ([], {}),                                               # serverless is the default
    ([], {"LAUNCH_MODE": "api", "RUNPOD_SERVERLESS": "1"}),  # RUNPOD_SERVERLESS=1 wins
    (["serverless"], {"LAUNCH_MODE": "api"}),               # the first argument wins
])
def test_serverless_mode_runs_one_job(tmp_path, args, env):
    test_input = json.dumps({"input": {"version_id": "demo", "workflow": workflows.image()}})
    proc = entry(*args, "--test_input", test_input,
                 env={"DRY_RUN": "1", "DATA_ROOT": str(tmp_path), "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
                      "RUNPOD_SKIP_GPU_CHECK": "true", **env})
    # runpod's test mode exits 1 when the handler answers an error; 0 means the job succeeded.
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Local testing complete" in proc.stdout and "Handler output" not in proc.stdout


def test_api_mode_starts_supervisord(tmp_path):
    home = tmp_path / "ComfyUI"
    write_fake_comfy_home(home)
    shutil.copytree(REPO_ROOT / "etc", tmp_path / "etc")
    port = free_port()
    env = {**os.environ, "APPLIANCE_PYTHON": sys.executable, "LAUNCH_MODE": "api", "DATA_ROOT": str(tmp_path / "data"),
           "COMFY_HOME": str(home), "COMFY_PORT": str(free_port()), "API_PORT": str(port)}
    env.pop("APPLIANCE_USER", None)
    log_path = tmp_path / "pod.log"
    with open(log_path, "wb") as log:
        # The entrypoint execs `python -m services.pod`; point it at the copied config.
        proc = subprocess.Popen([str(ENTRYPOINT), "--config", str(tmp_path / "etc" / "supervisord.conf")],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    pod = Pod(tmp_path, proc, port, 0, env, log_path)
    try:
        pod.wait_running()
        assert pod.wait_healthy()["ok"] is True
    finally:
        assert pod.stop() == 0


def test_the_dockerfiles_bake_command_installs_the_version(tmp_path):
    """The image bakes with `python -m services versions install`: run that very line here."""
    text = DOCKERFILE.read_text()
    line = re.search(r'python -m services versions install --no-models "\$\{VERSION_ID\}"', text)
    assert line, "the Dockerfile no longer bakes with `versions install`"
    repo = tmp_path / "ComfyUI-src"
    pinned = commit(repo, {"main.py": MAIN_PY, "requirements.txt": ""})
    write_spec(tmp_path / "versions", "baked", (file_url(repo), pinned))
    env = {**os.environ, "VERSION_ID": "baked", "VERSIONS_DIR": str(tmp_path / "versions"),
           "VERSIONS_ROOT": str(tmp_path / "opt-versions"), "VERSIONS_BASE_PYTHON": sys.executable,
           "DATA_ROOT": str(tmp_path / "data"), "LOG_SILENT": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = line.group(0).replace('"${VERSION_ID}"', "baked").replace("python", sys.executable, 1)
    proc = subprocess.run(command, shell=True, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "opt-versions" / "baked" / "version.lock.json").exists()
    # The entrypoint then serves it: a serverless job on the baked version, through the versions' venv.
    started = time.monotonic()
    test_input = json.dumps({"input": {"version_id": "baked", "workflow": workflows.image(width=8, height=8)}})
    run_env = {k: v for k, v in env.items() if k != "VERSION_ID"}
    proc = entry("serverless", "--test_input", test_input,
                 env={**run_env, "COMFY_PORT": str(free_port()), "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
                      "RUNPOD_SKIP_GPU_CHECK": "true", "DEFAULT_VERSION_ID": "baked"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - started < 120
