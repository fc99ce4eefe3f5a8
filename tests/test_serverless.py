"""The serverless worker through runpod's real code: the SDK's local API server
(`--rp_serve_api`) and its production worker loop against a fake RunPod job server."""
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from nacl.public import PrivateKey
from PIL import Image

from services.config import REPO_ROOT
from services.security.envelope import open_reply, seal_request
from tests import workflows
from tests.fake_runpod import FakeRunPod
from tests.standin_process import free_port, write_fake_comfy_home

pytestmark = pytest.mark.comfy


class Handler:
    def __init__(self, tmp_path, env=None, api=True, comfy_home=True):
        home = tmp_path / "ComfyUI"
        if comfy_home:
            write_fake_comfy_home(home)
        self.api_port, self.comfy_port = free_port(), free_port()
        self.env = {**os.environ, "DATA_ROOT": str(tmp_path / "data"), "COMFY_HOME": str(home),
                    "COMFY_PORT": str(self.comfy_port), "DEFAULT_VERSION_ID": "demo", "PYTHONPATH": str(REPO_ROOT),
                    "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true",
                    "NVIDIA_SMI": "/nonexistent/nvidia-smi", **(env or {})}
        args = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(self.api_port)] if api else []
        self.log_path = tmp_path / "handler.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.serverless", *args, "--rp_log_level", "INFO"],
                                         cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if api:
            self._wait_api()

    def _wait_api(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/docs", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(self.log_path.read_text())

    def post(self, path, body, timeout=60):
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def runsync(self, job_input, timeout=60):
        return self.post("/runsync", {"input": job_input}, timeout)

    def comfy_listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.comfy_port)) == 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    h = Handler(tmp_path_factory.mktemp("serverless"))
    yield h
    h.stop()


def png_size(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def test_runsync_returns_outputs(handler):
    answer = handler.runsync({"version_id": "demo", "workflow": workflows.image(width=80, height=40)})
    assert answer["status"] == "COMPLETED", answer
    assert png_size(answer["output"]["base64"]) == (80, 40)
    assert answer["output"]["comfy_version"].startswith("comfy_home:")


def test_comfy_started_before_the_first_job(tmp_path):
    h = Handler(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not h.comfy_listening():  # warm-up runs with no job at all
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        h.stop()


def test_run_then_status(handler):
    accepted = handler.post("/run", {"input": {"workflow": workflows.image(color=9)}})
    assert accepted["status"] == "IN_PROGRESS"
    done = handler.post(f"/status/{accepted['id']}", {})
    assert done["status"] == "COMPLETED" and done["output"]["outputs"][0]["type"] == "image"


@pytest.mark.parametrize("job_input,code", [
    ({"version_id": "ghost", "workflow": workflows.image()}, "unknown_version:ghost"),
    ({"version_id": "../../x", "workflow": workflows.image()}, "invalid_version_id:../../x"),
    ({"workflow": "{not json"}, "invalid_workflow:not_json"),
    ({"workflow": workflows.image(), "workflow_url": "http://127.0.0.1:9/w"}, "workflow_conflict"),
    ({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}},
     "workflow_rejected:missing_nodes"),
    ({"encrypted": True, "epk": "AAAA"}, "missing encrypted fields"),
])
def test_bad_payloads_fail_with_their_code(handler, job_input, code):
    answer = handler.runsync(job_input)
    assert answer["status"] == "FAILED"
    assert answer["error"].split(": ", 1)[0] == code  # RunPod keeps only this string


def test_crash_mid_job_then_the_next_job_restarts_comfy(handler):
    answer = handler.runsync({"workflow": workflows.exiting(code=3, after_seconds=0.3)})
    assert answer["status"] == "FAILED" and answer["error"].startswith("comfy_crashed")
    answer = handler.runsync({"workflow": workflows.image(color=10)})
    assert answer["status"] == "COMPLETED", answer


def test_dry_run_answers_without_comfy(tmp_path):
    h = Handler(tmp_path, env={"DRY_RUN": "1"}, comfy_home=False)
    try:
        answer = h.runsync({"workflow": workflows.image()})
        assert answer["status"] == "COMPLETED" and answer["output"]["dry_run"] is True
        assert h.runsync({"version_id": "ghost", "workflow": workflows.image()})["error"].startswith("unknown_version")
        assert not h.comfy_listening()
    finally:
        h.stop()


def test_failed_start_is_reported_on_the_job_and_the_worker_lives(tmp_path):
    h = Handler(tmp_path, comfy_home=False)
    try:
        for _ in range(2):
            answer = h.runsync({"workflow": workflows.image()})
            assert answer["status"] == "FAILED" and answer["error"].startswith("comfy_init_failed:no_comfy_home")
        assert h.proc.poll() is None
    finally:
        h.stop()


def test_encryption(tmp_path):
    key = PrivateKey.generate()
    h = Handler(tmp_path, env={"ENCRYPTION_REQUIRED": "1", "WORKER_PRIVATE_KEY_B64": base64.b64encode(bytes(key)).decode()})
    try:
        plain = h.runsync({"workflow": workflows.image()})
        assert plain["status"] == "FAILED" and plain["error"].startswith("encryption_required")
        envelope, box = seal_request({"workflow": workflows.image(width=24, height=24)},
                                     base64.b64encode(bytes(key.public_key)).decode())
        sealed = h.runsync(envelope)
        assert sealed["status"] == "COMPLETED" and sealed["output"]["encrypted"] is True
        assert png_size(open_reply(sealed["output"], box)["base64"]) == (24, 24)
        log = h.log_path.read_text()
        assert envelope["ciphertext"] not in log and "EmptyImage" not in log  # no payload in logs
    finally:
        h.stop()


def test_production_loop_posts_results_progress_and_stops_a_broken_worker(tmp_path):
    with FakeRunPod() as fake:
        h = Handler(tmp_path, env=fake.env(), api=False)
        try:
            fake.add_job("job-ok", {"workflow": workflows.sleep_then_save(1.5, steps=6)})
            final = fake.final("job-ok")
            assert "error" not in final and final["output"]["outputs"][0]["type"] == "image"
            progress = [b for b in fake.results("job-ok") if b.get("status") == "IN_PROGRESS"]
            assert progress and "percent" in progress[0]["output"]

            fake.add_job("job-bad", {"version_id": "ghost"})
            bad = fake.final("job-bad")
            assert bad["error"].startswith("unknown_version:ghost") and "stopPod" not in bad

            # A long job stopped by RunPod (cancel or timeout) interrupts ComfyUI.
            fake.add_job("job-long", {"workflow": workflows.sleep_then_save(60, steps=600)})
            time.sleep(2.0)
            fake.stop("job-long")
            fake.add_job("job-after", {"workflow": workflows.image(color=3)})
            started = time.monotonic()
            assert "error" not in fake.final("job-after", timeout=30)
            assert time.monotonic() - started < 20  # not stuck behind the 60 s prompt

            # ComfyUI dies twice in a row: the second failure asks RunPod for a new worker.
            fake.add_job("crash-1", {"workflow": workflows.exiting(code=3)})
            first = fake.final("crash-1")
            assert first["error"].startswith("comfy_crashed") and "stopPod" not in first
            fake.add_job("crash-2", {"workflow": workflows.exiting(code=3)})
            second = fake.final("crash-2")
            assert second["error"].startswith("comfy_crashed") and second.get("stopPod") is True
        finally:
            h.stop()
