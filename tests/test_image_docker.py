"""The image, built and run for real: a private Docker engine, a Debian base made with
debootstrap, docker/Dockerfile built by scripts/build_docker.sh (no torch), baking a test
version whose ComfyUI is the stand-in served by a loopback git server. Then both modes run as
users run them: Pod mode (healthz, a job, supervisorctl inside, program lines in
`docker logs`, a clean `docker stop`) and serverless (runpod's local API, DRY_RUN), always as
uid 1000 with the volume handed over to it.

Needs root and `docker.io` + `debootstrap` (`make test` installs them when it runs as root).
Timings of each stage are printed in pytest's summary (tests/conftest.py).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.config import REPO_ROOT
from tests import workflows
from tests.docker_engine import TIMINGS, DockerEngine, EngineUnavailable, build_base
from tests.standin_process import free_port, stop_process
from tests.versions_support import commit, write_spec

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]

BASE_TAG = "appliance-test-base:bookworm"
IMAGE_TAG = "appliance-test:local"
VERSION_ID = "imagetest"
PROGRAMS = ("comfyui", "api", "modelsync", "gpuwatch", "logforward")
RUNPOD_LOCAL = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}
API_TOKEN = "image-test-token"  # the image binds 0.0.0.0, so Pod mode needs one (or ALLOW_UNAUTHENTICATED=1)

STANDIN_MAIN = '''import os, sys
# The image test's "ComfyUI": the suite's stand-in, carried in this repository as a package.
here = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = here + os.pathsep + os.environ.get("PYTHONPATH", "")
os.execv(sys.executable, [sys.executable, "-u", "-m", "comfy_standin", *sys.argv[1:]])
'''


def timed(label: str, action):
    start = time.monotonic()
    try:
        return action()
    finally:
        TIMINGS[label] = round(time.monotonic() - start, 1)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    cache = os.environ.get("IMAGE_TEST_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("docker")
    engine = DockerEngine(root)
    try:
        timed("engine_start_s", engine.start)
    except EngineUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Docker engine here: {exc}")
    try:
        yield engine
    finally:
        engine.stop()
        if not cache:
            shutil.rmtree(root, ignore_errors=True)


class GitDaemon:
    """`git daemon` on 127.0.0.1: the build clones from it as uid 1000, which a repository
    copied into the build context would refuse (git's safe.directory ownership check)."""

    def __init__(self, base: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", f"--port={self.port}",
             f"--base-path={base}", str(base)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["git", "ls-remote", self.url("standin")], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("git daemon did not answer")
            time.sleep(0.1)

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        stop_process(self.proc, 10)


def standin_repo(folder: Path) -> str:
    files = {"main.py": STANDIN_MAIN, "requirements.txt": "pillow==13.0.0\n"}
    for source in (REPO_ROOT / "tests" / "comfy_standin").glob("*.py"):
        files[f"comfy_standin/{source.name}"] = source.read_text()
    return commit(folder, files)


def build_context(folder: Path) -> Path:
    """The working tree as a fresh clone would have it (tracked and new files, nothing ignored)."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = REPO_ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    return folder


@pytest.fixture(scope="module")
def image(engine, tmp_path_factory):
    work = tmp_path_factory.mktemp("image")
    if not engine.has_image(BASE_TAG):
        timed("base_s", lambda: build_base(engine, engine.root / "rootfs", BASE_TAG))
    pinned = standin_repo(work / "git" / "standin")
    daemon = GitDaemon(work / "git")
    try:
        context = build_context(work / "context")
        write_spec(context / "versions", VERSION_ID, (daemon.url("standin"), pinned))
        build = timed("build_s", lambda: subprocess.run(
            [str(context / "scripts" / "build_docker.sh"), "--tag", IMAGE_TAG, "--version", VERSION_ID,
             "--base", BASE_TAG, "--no-torch", "--network", "host"],
            env=engine.env, capture_output=True, text=True, timeout=1200))
        assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-3000:]
        TIMINGS["image_mb"] = round(int(engine.run("image", "inspect", "-f", "{{.Size}}", IMAGE_TAG)
                                        .stdout.strip()) / 2**20)
    finally:
        daemon.stop()
    yield IMAGE_TAG


def http(method: str, url: str, body=None, timeout: float = 60, token: str | None = None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def wait_for(check, what: str, timeout: float, container: "Container"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline and container.running():
        try:
            ok, last = check()
            if ok:
                return last
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached in {timeout} s: {last}\n{container.logs()[-6000:]}")


class Container:
    def __init__(self, engine: DockerEngine, name: str):
        self.engine, self.name = engine, name

    @classmethod
    def run(cls, engine: DockerEngine, name: str, *args: str, env: dict[str, str] | None = None,
            volume: Path | None = None) -> "Container":
        options = ["--name", name, "--network", "host"]
        for key, value in (env or {}).items():
            options += ["-e", f"{key}={value}"]
        if volume is not None:
            options += ["-v", f"{volume}:/workspace"]
        engine.run("run", "-d", *options, IMAGE_TAG, *args)
        return cls(engine, name)

    def running(self) -> bool:
        proc = self.engine.run("inspect", "-f", "{{.State.Running}}", self.name, check=False, timeout=30)
        return proc.stdout.strip() == "true"

    def logs(self) -> str:
        proc = self.engine.run("logs", self.name, check=False, timeout=60)
        return proc.stdout + proc.stderr

    def exec(self, *args: str) -> subprocess.CompletedProcess:
        return self.engine.run("exec", self.name, *args, check=False, timeout=60)

    def uids(self) -> dict[str, str]:
        """command line -> uid of every process in the container."""
        out = self.engine.run("top", self.name, "-eo", "pid,uid,args").stdout.splitlines()[1:]
        return {line.split(None, 2)[2]: line.split(None, 2)[1] for line in out if line.strip()}

    def stop(self, timeout: int = 60) -> tuple[int, float]:
        start = time.monotonic()
        self.engine.run("stop", "-t", str(timeout), self.name, timeout=timeout + 30)
        took = time.monotonic() - start
        code = int(self.engine.run("inspect", "-f", "{{.State.ExitCode}}", self.name).stdout.strip())
        return code, took

    def remove(self) -> None:
        self.engine.run("rm", "-f", self.name, check=False, timeout=60)


def assert_dropped_to_uid_1000(container: Container) -> None:
    uids = container.uids()
    # tini stays root as PID 1 (it only reaps and forwards signals); everything else is uid 1000.
    others = {cmd: uid for cmd, uid in uids.items() if not cmd.startswith("/usr/bin/tini")}
    assert others and all(uid == "1000" for uid in others.values()), uids


def assert_volume_handed_over(volume: Path) -> None:
    assert volume.stat().st_uid == 1000
    written = [p for p in volume.rglob("*")]
    assert written and all(p.lstat().st_uid == 1000 for p in written), [
        (str(p), p.lstat().st_uid) for p in written if p.lstat().st_uid != 1000]


def assert_png_output(result: dict) -> None:
    output = result["outputs"][0]
    assert output["content_type"] == "image/png"
    assert base64.b64decode(output["base64"])[:8] == b"\x89PNG\r\n\x1a\n"


def root_owned_volume(tmp_path: Path) -> Path:
    volume = tmp_path / "volume"
    volume.mkdir()
    os.chown(volume, 0, 0)  # as RunPod mounts it
    return volume


def test_pod_mode_without_a_token_refuses_to_start(engine, image):
    # The image binds 0.0.0.0: closed by default, one line, exit status 2.
    proc = engine.run("run", "--rm", "--network", "host", "-e", "LAUNCH_MODE=api", image, check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "config error: API_HOST=0.0.0.0" in proc.stderr, proc.stderr[-2000:]


def test_pod_mode_in_the_image(engine, image, tmp_path):
    volume = root_owned_volume(tmp_path)
    api_port = free_port()
    pod = Container.run(engine, f"pod-{os.getpid()}", env={
        "LAUNCH_MODE": "api", "API_PORT": str(api_port), "COMFY_PORT": str(free_port()), "API_TOKEN": API_TOKEN},
        volume=volume)
    url = f"http://127.0.0.1:{api_port}"
    try:
        started = time.monotonic()

        def healthy():
            status, body = http("GET", url + "/healthz", timeout=3, token=API_TOKEN)
            return status == 200, body
        health = wait_for(healthy, "/healthz 200", 180, pod)
        TIMINGS["pod_healthy_s"] = round(time.monotonic() - started, 1)
        assert health["ok"] is True and health["comfy"]["state"] == "ready", health

        assert set(http("GET", url + "/healthz", timeout=3)[1]) == {"ok", "server_public_key_b64"}  # a stranger
        assert http("GET", url + "/jobs", timeout=3)[0] == 401
        status, result = http("POST", url + "/run", {"version_id": VERSION_ID, "output_mode": "base64",
                                                     "workflow": workflows.image(width=32, height=24)}, token=API_TOKEN)
        assert status == 200, result
        assert_png_output(result)

        def all_running():
            # supervisorctl as ops type it: no -c, no environment (the WORKDIR has etc/).
            ctl = pod.exec("supervisorctl", "status")
            states = dict(line.split()[:2] for line in ctl.stdout.splitlines() if line.strip())
            return ctl.returncode == 0 and all(states.get(p) == "RUNNING" for p in PROGRAMS), ctl.stdout + ctl.stderr
        wait_for(all_running, "every program RUNNING", 30, pod)

        assert_dropped_to_uid_1000(pod)
        assert_volume_handed_over(volume)

        # Program lines reach the container's stdout through the log forwarder, as JSON.
        lines = [json.loads(line) for line in pod.logs().splitlines() if line.startswith("{")]
        loggers = {line.get("logger") for line in lines}
        assert "comfyui" in loggers and any(str(name).startswith("api") for name in loggers), sorted(map(str, loggers))

        code, took = pod.stop()
        TIMINGS["pod_stop_s"] = round(took, 1)
        assert code == 0, pod.logs()[-3000:]
    finally:
        pod.remove()


def test_serverless_mode_in_the_image(engine, image, tmp_path):
    volume = root_owned_volume(tmp_path)
    port = free_port()
    worker = Container.run(engine, f"serverless-{os.getpid()}", "serverless", "--rp_serve_api",
                           "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port), env=RUNPOD_LOCAL, volume=volume)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: (http("GET", url + "/openapi.json", timeout=3)[0] == 200, None), "runpod's local API", 120,
                 worker)
        status, reply = http("POST", url + "/runsync", {"input": {
            "version_id": VERSION_ID, "output_mode": "base64", "workflow": workflows.image(width=16, height=16)}},
            timeout=180)
        assert status == 200 and reply["status"] == "COMPLETED", reply
        assert_png_output(reply["output"])
        assert_dropped_to_uid_1000(worker)
        assert_volume_handed_over(volume)
        code, took = worker.stop()
        TIMINGS["serverless_stop_s"] = round(took, 1)
        # Stopped by its SIGTERM (143), never killed at the deadline (137). Exiting 0 with its
        # ComfyUI child stopped first is the self-healing issue's (12) to add.
        assert code in (0, 143), worker.logs()[-3000:]
    finally:
        worker.remove()


def test_dry_run_in_the_image(engine, image):
    test_input = json.dumps({"input": {"version_id": VERSION_ID, "output_mode": "base64", "workflow": workflows.image()}})
    proc = engine.run("run", "--rm", "--network", "host", "-e", "DRY_RUN=1",
                      *[arg for key, value in RUNPOD_LOCAL.items() for arg in ("-e", f"{key}={value}")],
                      image, "serverless", "--test_input", test_input, check=False, timeout=180)
    # runpod's test mode exits 1 when the handler answers an error; 0 means the job succeeded.
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Local testing complete" in proc.stdout + proc.stderr
