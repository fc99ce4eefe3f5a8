"""Stopping the serverless worker, with real processes: SIGTERM or SIGINT lets the running job
finish within SHUTDOWN_GRACE or interrupts it (`worker_shutdown`), stops ComfyUI and exits 0,
through the SDK's local API and its production loop alike; a worker killed outright (SIGKILL)
takes its ComfyUI with it (parent-death signal)."""
import json
import signal
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest

from tests import workflows
from tests.fake_runpod import FakeRunPod
from tests.leaks import gone
from tests.test_serverless import Handler

pytestmark = pytest.mark.comfy


def comfy_child(h: Handler) -> int:
    [comfy] = [c for c in psutil.Process(h.proc.pid).children() if "main.py" in " ".join(c.cmdline())]
    return comfy.pid


def comfy_pid(h: Handler, timeout: float = 30) -> int:
    """The worker's ComfyUI, once it listens (warm-up starts it with no job)."""
    deadline = time.monotonic() + timeout
    while not h.comfy_listening():
        assert time.monotonic() < deadline, h.log_path.read_text()
        time.sleep(0.1)
    return comfy_child(h)


def wait_prompt_running(h: Handler, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{h.comfy_port}/queue", timeout=2) as resp:
            if json.loads(resp.read())["queue_running"]:
                return
        time.sleep(0.05)
    raise TimeoutError(h.log_path.read_text())


def runsync_in_background(h: Handler, job_input: dict) -> tuple[threading.Thread, dict]:
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(h.runsync(job_input, timeout=90)), daemon=True)
    thread.start()
    return thread, answer


def stop_with(h: Handler, sig: signal.Signals, timeout: float = 60) -> tuple[int, float]:
    """Send `sig`; the exit status and the seconds the worker took to exit."""
    sent = time.monotonic()
    h.proc.send_signal(sig)
    code = h.proc.wait(timeout)
    return code, time.monotonic() - sent


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_job_past_the_grace_is_interrupted_and_fails_typed(tmp_path, sig):
    h = Handler(tmp_path, env={"SHUTDOWN_GRACE": "2"})
    try:
        comfy = comfy_pid(h)
        thread, answer = runsync_in_background(h, {"workflow": workflows.sleep_then_save(60, steps=600)})
        wait_prompt_running(h)
        code, took = stop_with(h, sig)
        thread.join(10)
        assert answer["status"] == "FAILED" and answer["error"].startswith("worker_shutdown: "), answer
        assert code == 0, h.log_path.read_text()
        assert 2 <= took < 15  # the grace, then the interrupt and ComfyUI's stop; not the 60 s job
        assert gone(comfy, timeout=1)
        log = h.log_path.read_text()
        assert '"shutdown_begun"' in log and '"job_interrupted_by_shutdown"' in log
    finally:
        h.stop()


def test_a_job_within_the_grace_finishes(tmp_path):
    h = Handler(tmp_path, env={"SHUTDOWN_GRACE": "30"})
    try:
        comfy = comfy_pid(h)
        thread, answer = runsync_in_background(h, {"workflow": workflows.sleep_then_save(3, steps=30)})
        wait_prompt_running(h)
        sent = time.monotonic()
        h.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(urllib.error.URLError):  # no new job once the signal came
            h.runsync({"workflow": workflows.image()}, timeout=5)
        assert h.proc.wait(30) == 0, h.log_path.read_text()
        thread.join(10)
        assert answer["status"] == "COMPLETED" and answer["output"]["outputs"], answer
        assert time.monotonic() - sent < 15
        assert gone(comfy, timeout=1)
    finally:
        h.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_worker_exits_0_at_once(tmp_path, sig):
    h = Handler(tmp_path, env={"SHUTDOWN_GRACE": "30"})
    try:
        comfy = comfy_pid(h)
        code, took = stop_with(h, sig)
        assert code == 0 and took < 5, h.log_path.read_text()
        assert gone(comfy, timeout=1)
    finally:
        h.stop()


def test_production_loop_posts_the_interrupted_job_and_exits_0(tmp_path):
    with FakeRunPod() as fake:
        h = Handler(tmp_path, env={**fake.env(), "SHUTDOWN_GRACE": "2"}, api=False)
        try:
            comfy = comfy_pid(h)
            fake.add_job("job-long", {"workflow": workflows.sleep_then_save(60, steps=600)})
            wait_prompt_running(h)
            code, took = stop_with(h, signal.SIGTERM)
            assert code == 0 and 2 <= took < 15, h.log_path.read_text()
            assert fake.final("job-long", timeout=1)["error"].startswith("worker_shutdown: ")
            assert gone(comfy, timeout=1)
        finally:
            h.stop()


def test_sigterm_during_start_up_exits_0(tmp_path):
    # The SDK takes seconds to import: ComfyUI is started first, no SDK handler is in place yet.
    with FakeRunPod() as fake:
        h = Handler(tmp_path, env=fake.env(), api=False)
        try:
            deadline = time.monotonic() + 30
            while '"comfy_starting"' not in h.log_path.read_text():
                assert time.monotonic() < deadline and h.proc.poll() is None, h.log_path.read_text()
                time.sleep(0.02)
            comfy = comfy_child(h)
            code, took = stop_with(h, signal.SIGTERM)
            assert code == 0 and took < 15, h.log_path.read_text()
            assert gone(comfy, timeout=1)
        finally:
            h.stop()


def test_a_killed_worker_takes_comfy_along(tmp_path):
    h = Handler(tmp_path)
    try:
        comfy = comfy_pid(h)
        h.proc.kill()
        h.proc.wait(10)
        assert gone(comfy, timeout=5)  # SIGKILL runs no cleanup: the kernel's parent-death signal
    finally:
        h.stop()
