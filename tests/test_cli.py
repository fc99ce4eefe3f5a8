"""`python -m services run` as a user runs it: a real subprocess, stdout JSON, exit status."""
import base64
import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from services.config import REPO_ROOT
from tests import workflows
from tests.standin_process import free_port, write_fake_comfy_home

pytestmark = pytest.mark.comfy


def cli(*args, env=None, timeout=60):
    full_env = {**os.environ, "LOG_SILENT": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "services", "run", *args], cwd=REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workflow_file(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflows.image(width=96, height=48)))
    return path


def test_cli_returns_a_decodable_png(comfy, workflow_file):
    proc = cli("--workflow", str(workflow_file), "--version", "demo", "--output", "base64", "--comfy-url", comfy.url)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert Image.open(io.BytesIO(base64.b64decode(result["base64"]))).size == (96, 48)


def test_cli_starts_and_stops_its_own_comfy(tmp_path, workflow_file):
    home = tmp_path / "ComfyUI"
    write_fake_comfy_home(home)
    port = free_port()
    proc = cli("--workflow", str(workflow_file), "--version", "demo",
               env={"COMFY_HOME": str(home), "COMFY_PORT": str(port), "DATA_ROOT": str(tmp_path / "data")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"][0]["type"] == "image"
    # The ComfyUI it started is gone again.
    import socket
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("args,code", [
    (["--version", "../etc"], "invalid_version_id:../etc"),
    (["--version", "ghost"], "unknown_version:ghost"),
    ([], "missing_version_id"),
])
def test_cli_bad_input_exits_1_with_the_code(workflow_file, args, code):
    proc = cli("--workflow", str(workflow_file), "--comfy-url", "http://127.0.0.1:9", *args,
               env={"DEFAULT_VERSION_ID": ""})
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == code
    assert proc.stderr.strip().startswith(f"error: {code}")


def test_cli_unreadable_workflow(tmp_path):
    proc = cli("--workflow", str(tmp_path / "nope.json"), "--version", "demo")
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"] == "invalid_workflow:unreadable"


def test_cli_without_comfy_home_reports_init_failure(tmp_path, workflow_file):
    proc = cli("--workflow", str(workflow_file), "--version", "demo",
               env={"COMFY_HOME": str(tmp_path / "none"), "DATA_ROOT": str(tmp_path / "data")})
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"] == "comfy_init_failed:no_comfy_home"


def test_cli_comfy_unreachable(workflow_file):
    proc = cli("--workflow", str(workflow_file), "--version", "demo", "--comfy-url", "http://127.0.0.1:9")
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"] == "comfy_unreachable"
