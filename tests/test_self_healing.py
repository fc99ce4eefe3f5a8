"""Self-healing with real processes: ComfyUI crashed, frozen or stuck in a node, in Pod mode
(supervisord restarts it) and serverless (the worker's own child). Jobs ride out restarts,
a job that kills ComfyUI every time stops after JOB_MAX_ATTEMPTS, and the next job works.

Timings (crash to next job served, stall to recovery) are printed in the run's summary."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import psutil
import pytest

from services.comfy import backoff
from tests import timings, workflows
from tests.pod_process import start_pod
from tests.test_serverless import Handler

# Small, so the faults show within seconds: the defaults are minutes.
FAST = {"STALL_TIMEOUT": "3", "STALL_GRACE": "2", "COMFY_HANG_TIMEOUT": "4", "JOB_MAX_ATTEMPTS": "2"}
TIMINGS = timings.TIMINGS["recovery (s)"]


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = start_pod(tmp_path_factory.mktemp("healing"), env=FAST)
    yield pod
    pod.stop()


@pytest.fixture(autouse=True)
def no_backoff(request):
    """Each test starts without the crash history of the one before: the comfyui program backs
    off a crash loop (services/comfy/backoff.py), which is right in production and slow here."""
    if "pod" in request.fixturenames:
        pod = request.getfixturevalue("pod")
        backoff.forget(pod.root / "data" / "run")
        yield
        backoff.forget(pod.root / "data" / "run")
    else:
        yield


def new_comfy_pid(pod, old: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (pid := pod.pid("comfyui")) in (old, 0):
        assert time.monotonic() < deadline, pod.ctl("status").stdout
        time.sleep(0.1)
    return pid


def run_and_signal(pod, body: dict, pid: int, sig: signal.Signals) -> tuple[int, dict, float]:
    """POST /run, send `sig` to `pid` once the job runs; (status, answer, seconds from the signal)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(pod.request, "POST", "/run", body)
        deadline = time.monotonic() + 10
        while pod.request("GET", "/jobs?state=running")[1]["counts"].get("running", 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(pid, sig)
        signalled_at = time.monotonic()
        status, answer = future.result(timeout=90)
    return status, answer, time.monotonic() - signalled_at


def resume(pid: int) -> None:
    """SIGCONT a process a test froze, if it still exists (else its stop would wait it out)."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


# ---- Pod mode --------------------------------------------------------------------------------
def test_a_job_sent_right_after_comfyui_crashed_waits_for_the_restart(pod):
    before = pod.pid("comfyui")
    os.kill(before, signal.SIGKILL)
    crashed_at = time.monotonic()
    status, result = pod.request("POST", "/run", {"workflow": workflows.image(color=21)})
    TIMINGS["pod: crash -> next job served"] = round(time.monotonic() - crashed_at, 2)
    assert status == 200 and result["outputs"], result
    assert new_comfy_pid(pod, before) != before


def test_a_job_whose_prompt_died_with_comfyui_is_submitted_again(pod):
    status, result, _ = run_and_signal(pod, {"workflow": workflows.sleep_then_save(2, steps=20),
                                             "job_id": "retried-once"}, pod.pid("comfyui"), signal.SIGKILL)
    assert status == 200 and result["outputs"], result
    job = pod.request("GET", "/jobs/retried-once")[1]
    assert (job["state"], job["comfy_attempts"]) == ("succeeded", 2)
    assert "job_retry" in pod.log()


def test_a_job_that_crashes_comfyui_every_time_fails_after_its_attempts_and_the_next_job_runs(pod):
    status, error = pod.request("POST", "/run", {"workflow": workflows.exiting(code=3), "job_id": "poison"})
    assert (status, error["error"], error["attempts"]) == (502, "comfy_crashed", 2), error
    job = pod.request("GET", "/jobs/poison")[1]
    assert (job["state"], job["error"], job["comfy_attempts"]) == ("failed", "comfy_crashed", 2)
    status, result = pod.request("POST", "/run", {"workflow": workflows.image(color=22)})
    assert status == 200 and result["outputs"], result


def test_a_node_that_ignores_interrupts_is_stalled_comfyui_restarted_and_the_next_job_runs(pod):
    before = pod.pid("comfyui")
    started = time.monotonic()
    status, error = pod.request("POST", "/run", {"workflow": workflows.hanging(120), "job_id": "hangs"})
    stalled_after = time.monotonic() - started
    assert (status, error["error"], error["attempts"]) == (504, "comfy_stalled", 2), error
    # Two attempts, each STALL_TIMEOUT + STALL_GRACE + a restart, far from the node's 120 s.
    assert stalled_after < 40, stalled_after
    after = new_comfy_pid(pod, before)
    status, result = pod.request("POST", "/run", {"workflow": workflows.image(color=23)})
    TIMINGS["pod: stall (2 attempts) -> failed, restarted"] = round(stalled_after, 2)
    TIMINGS["pod: stall -> next job served"] = round(time.monotonic() - started, 2)
    assert status == 200 and result["outputs"], result
    assert pod.pid("comfyui") == after
    assert "comfy_stall_restart" in pod.log()


def test_comfyui_frozen_mid_job_is_killed_and_the_job_succeeds_on_its_second_attempt(pod):
    before = pod.pid("comfyui")
    try:
        status, result, seconds = run_and_signal(pod, {"workflow": workflows.sleep_then_save(2, steps=20),
                                                       "job_id": "frozen"}, before, signal.SIGSTOP)
        TIMINGS["pod: frozen mid-job -> job served"] = round(seconds, 2)
    finally:
        resume(before)
    assert status == 200 and result["outputs"], result
    job = pod.request("GET", "/jobs/frozen")[1]
    assert job["comfy_attempts"] == 2
    assert not psutil.pid_exists(before) or psutil.Process(before).status() == psutil.STATUS_ZOMBIE


def test_comfyui_frozen_while_idle_is_killed_and_restarted(pod):
    before = pod.pid("comfyui")
    pod.wait_healthy(30, comfy_pid=before)
    time.sleep(2)  # the hang watch has seen it answer: from now on silence means frozen
    try:
        os.kill(before, signal.SIGSTOP)
        frozen_at = time.monotonic()
        after = new_comfy_pid(pod, before, timeout=40)  # COMFY_HANG_TIMEOUT 4 s + the 5 s check period
        pod.wait_healthy(30, comfy_pid=after)
        TIMINGS["pod: frozen idle -> healthy again"] = round(time.monotonic() - frozen_at, 2)
    finally:
        resume(before)
    assert "comfy_hung" in pod.log()
    status, result = pod.request("POST", "/run", {"workflow": workflows.image(color=24)})
    assert status == 200 and result["outputs"], result


def test_a_cuda_fault_is_latched_comfyui_replaced_and_the_next_job_runs(pod):
    before = pod.pid("comfyui")
    status, error = pod.request("POST", "/run", {"workflow": workflows.raising(
        "CUDA error: an illegal memory access was encountered"), "job_id": "cuda-fault"})
    assert (status, error["error"]) == (503, "gpu_fault"), error
    assert pod.request("GET", "/jobs/cuda-fault")[1]["comfy_attempts"] == 1  # never retried
    after = new_comfy_pid(pod, before)  # the faulted process is replaced: a fresh CUDA context
    health = pod.wait_healthy(30, comfy_pid=after)
    assert health["gpu_fault"] is None
    status, result = pod.request("POST", "/run", {"workflow": workflows.image(color=25)})
    assert status == 200 and result["outputs"], result
    assert "gpu_fault_latched" in pod.log() and "gpu_fault_cleared" in pod.log()


# ---- serverless ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    h = Handler(tmp_path_factory.mktemp("healing-serverless"), env=FAST)
    yield h
    h.stop()


def comfy_child(handler) -> psutil.Process:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in psutil.Process(handler.proc.pid).children(recursive=True):
            if any("main.py" in part for part in child.cmdline()):
                return child
        time.sleep(0.1)
    raise TimeoutError("no ComfyUI child")


@pytest.mark.comfy
def test_serverless_job_after_a_crash_and_a_stall_both_recover(handler):
    assert handler.runsync({"workflow": workflows.image(color=30)})["status"] == "COMPLETED"
    first = comfy_child(handler)
    first.kill()
    crashed_at = time.monotonic()
    answer = handler.runsync({"workflow": workflows.image(color=31)})
    TIMINGS["serverless: crash -> next job served"] = round(time.monotonic() - crashed_at, 2)
    assert answer["status"] == "COMPLETED", answer

    started = time.monotonic()
    answer = handler.runsync({"workflow": workflows.hanging(120)}, timeout=90)
    assert answer["status"] == "FAILED" and answer["error"].startswith("comfy_stalled"), answer
    assert time.monotonic() - started < 40
    answer = handler.runsync({"workflow": workflows.image(color=32)})
    TIMINGS["serverless: stall -> next job served"] = round(time.monotonic() - started, 2)
    assert answer["status"] == "COMPLETED", answer
    assert "refresh_worker" not in answer  # a stall is healed here, not by a new worker


@pytest.mark.comfy
def test_serverless_frozen_comfyui_mid_job_is_replaced_and_the_job_succeeds(handler):
    assert handler.runsync({"workflow": workflows.image(color=33)})["status"] == "COMPLETED"
    child = comfy_child(handler)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(handler.runsync, {"workflow": workflows.sleep_then_save(2, steps=20)}, 90)
        time.sleep(1.0)
        child.suspend()
        try:
            answer = future.result(timeout=90)
        finally:
            if child.is_running():
                child.resume()
    assert answer["status"] == "COMPLETED", answer
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
