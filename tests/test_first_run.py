"""`make run` from a fresh clone ends in a working ComfyUI, without network.

The clone is a copy of this working tree's files (tracked and not ignored, so uncommitted
changes count) with the suite's virtualenv as its `.venv`, started the way `make run` starts
it. ComfyUI's GitHub URL reaches a local repository through git's own URL rewriting
(`url.<local>.insteadOf`, in a GIT_CONFIG_GLOBAL file), whose main.py runs the stand-in and
whose requirements name one local wheel; the demo spec is the real one but for its commit.
"""
import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from PIL import Image

from services.config import REPO_ROOT, SETTINGS, Settings
from services.gpu import device
from services.pod import first_run
from tests.pod_process import Pod
from tests.standin_process import free_port
from tests.versions_support import MAIN_PY, commit, file_url, git, make_wheel

COMFYUI_REPO = "https://github.com/Comfy-Org/ComfyUI.git"


def fresh_clone(dest: Path) -> Path:
    listed = git(REPO_ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file this change deletes is listed but gone
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)
    (dest / ".venv").symlink_to(sys.prefix)  # what `make venv` would build, already built
    return dest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The clone, the stand-in "ComfyUI" repository, its wheel and the git rewrite."""
    root = tmp_path_factory.mktemp("first-run")
    wheels = root / "wheels"
    make_wheel(wheels, "tinydep", "1.0")
    repo = root / "ComfyUI"
    pinned = commit(repo, {"main.py": MAIN_PY, "requirements.txt": "tinydep==1.0\n", "comfy/__init__.py": ""})
    gitconfig = root / "gitconfig"
    gitconfig.write_text(f'[url "{file_url(repo)}"]\n\tinsteadOf = {COMFYUI_REPO}\n')
    return {"root": root, "clone": fresh_clone(root / "clone"), "wheels": wheels, "commit": pinned,
            "gitconfig": gitconfig}


def demo_spec(versions_dir: Path, commit_id: str) -> Path:
    spec = json.loads((REPO_ROOT / "versions" / "demo.json").read_text())
    assert spec["comfyui"]["repo"] == COMFYUI_REPO  # the rewrite, not the spec, leads to the local repo
    spec["comfyui"]["commit"] = commit_id
    versions_dir.mkdir(parents=True, exist_ok=True)
    (versions_dir / "demo.json").write_text(json.dumps(spec))
    return versions_dir


def shell_env(world, versions_dir: Path, **extra: str) -> dict[str, str]:
    """A user's shell: none of the appliance's variables (a developer's COMFY_HOME must not leak
    in), the test's ports, versions folder, wheels and git rewrite."""
    names = {name for setting in SETTINGS for name in setting.env} | {"PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, "GIT_CONFIG_GLOBAL": str(world["gitconfig"]), "VERSIONS_DIR": str(versions_dir),
            "VERSIONS_PIP_ARGS": f"--no-index --find-links {world['wheels']}", **extra}


def make_run(clone: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """What `make run` runs once the virtualenv is there."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([str(clone / ".venv" / "bin" / "python"), "-m", "services.pod"], cwd=clone, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_first_run_installs_the_demo_version_and_serves_it(world):
    clone = world["clone"]
    api_port, comfy_port = free_port(), free_port()
    env = shell_env(world, demo_spec(world["root"] / "versions", world["commit"]),
                    API_PORT=str(api_port), COMFY_PORT=str(comfy_port))
    log_path = world["root"] / "make-run.log"
    pod = Pod(clone, make_run(clone, env, log_path), api_port, comfy_port, env, log_path)
    try:
        pod.wait_running(180)
        health = pod.wait_healthy(120)
        log = pod.log()
        # The install showed its steps, each with its time, and pip's own lines.
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        steps = [e["step"] for e in events if e["event"] == "version_install_step"]
        assert steps == ["comfyui", "venv", "requirements"] and all("ms" in e for e in events
                                                                    if e["event"] == "version_install_step")
        assert any(e["event"] == "pip_output" and "tinydep" in e["line"] for e in events)
        assert (clone / ".data" / "versions" / "demo" / "version.lock.json").is_file()
        assert health["version"]["comfy"] == "demo"

        status, result = pod.request("POST", "/run", {"version_id": "demo"})
        assert status == 200, result
        assert result["comfy_version"] == "demo" and result["outputs"][0]["content_type"] == "image/png"
        assert Image.open(io.BytesIO(base64.b64decode(result["base64"]))).size == (512, 512)

        # This machine has no GPU (else no `--cpu`): ComfyUI was told so.
        comfy_argv = psutil.Process(pod.pid("comfyui")).cmdline()
        assert ("--cpu" in comfy_argv) is not device.has_gpu(), comfy_argv
    finally:
        pod.stop()


def test_a_failed_install_ends_with_one_line_and_no_supervisord(world, tmp_path):
    env = shell_env(world, demo_spec(tmp_path / "versions", "0" * 40), DATA_ROOT=str(tmp_path / "data"),
                    API_PORT=str(free_port()), COMFY_PORT=str(free_port()))
    log_path = tmp_path / "make-run.log"
    proc = make_run(world["clone"], env, log_path)
    try:
        assert proc.wait(120) == 1
    finally:
        proc.kill()
        proc.wait()
    output = log_path.read_text()
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: version_install_failed:demo:comfyui_commit: "), output
    assert "Traceback" not in output and "supervisord started" not in output
    assert not (tmp_path / "data" / "versions" / "demo").exists()


def test_an_image_never_installs_at_start(tmp_path):
    # No spec, no versions folder: returning without an error shows it read nothing.
    settings = Settings.from_env({"APPLIANCE_PROFILE": "image", "DEFAULT_VERSION_ID": "ghost",
                                  "DATA_ROOT": str(tmp_path), "VERSIONS_DIR": str(tmp_path / "none")})
    first_run.ensure_installed(settings)
    assert list(tmp_path.iterdir()) == []
