"""Multi-GPU Pods: one supervised ComfyUI per GPU behind the one API (COMFY_GPUS=2, real
supervisord, two stand-in backends running installed versions, two API workers); opt-in, the
same with two real ComfyUI processes on the CPU (`make test-real`).

The fake nvidia-smi prints the recorded H100 row for GPU 0 and the same GPU as index 1 (another
UUID); a test makes GPU 1 report uncorrected ECC errors by switching the recording it prints.
"""
import json
import os
import signal
import time

import psutil
import pytest

from services.config import Settings
from services.versions.install import install
from services.versions.spec import SpecStore
from tests import workflows
from tests.comfy_backends import CUSTOM_NODES, KIND, REAL_DIR, real_python
from tests.pod_process import FIXTURES, start_pod
from tests.versions_support import MAIN_PY, commit, file_url, write_spec

ECC_FIELD = 16  # ecc.errors.uncorrected.volatile.total in services/gpu/nvidia_smi.py's QUERY_FIELDS


def two_gpus(row: str, ecc_on_second: int = 0) -> str:
    second = [f.strip() for f in row.split(",")]
    second[0], second[1] = "1", "GPU-00000000-0000-0000-0000-000000000001"
    second[ECC_FIELD] = str(ecc_on_second)
    return row.strip() + "\n" + ", ".join(second) + "\n"


@pytest.fixture(scope="module")
def smi(tmp_path_factory):
    """A fake nvidia-smi printing whichever recording `scenario` names (switched by tests)."""
    folder = tmp_path_factory.mktemp("smi")
    row = (FIXTURES / "nvidia-smi" / "h100-idle-query.csv").read_text().strip()
    (folder / "healthy.csv").write_text(two_gpus(row))
    (folder / "gpu1-ecc.csv").write_text(two_gpus(row, ecc_on_second=3))
    (folder / "scenario").write_text("healthy")
    apps = FIXTURES / "nvidia-smi" / "h100-idle-compute-apps.csv"
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\ncase "$*" in *compute-apps*) cat {apps};; '
                      f'*) cat {folder}/$(cat {folder}/scenario).csv;; esac\n')
    script.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def pod(tmp_path_factory, smi):
    root = tmp_path_factory.mktemp("multi-gpu")
    repo = root / "ComfyUI-src"
    pinned = commit(repo, {"main.py": MAIN_PY, "requirements.txt": ""})
    for version_id in ("one", "two"):
        write_spec(root / "versions", version_id, (file_url(repo), pinned))
    env = {"VERSIONS_DIR": str(root / "versions"), "DEFAULT_VERSION_ID": "one", "LOG_SILENT": "1",
           "COMFY_GPUS": "2", "API_WORKERS": "2", "NVIDIA_SMI": str(smi / "nvidia-smi")}
    settings = Settings.from_env({**env, "DATA_ROOT": str(root / "pod" / "data")})
    specs = SpecStore(settings.versions_dir)
    for version_id in ("one", "two"):
        install(specs.load(version_id), settings)
    pod = start_pod(root / "pod", env=env, comfy_home="unset")
    try:
        wait_backends(pod, lambda b: b["ok"], "both backends serving")
        yield pod
    finally:
        pod.stop()


def backends(pod) -> list[dict]:
    return pod.request("GET", "/healthz")[1]["backends"]


def versions_on_backends(pod, timeout=30) -> dict[str, int]:
    """{version: backend} once one backend runs each version (after the version routing test),
    as whichever API worker answers sees it (each refreshes its own snapshot every second)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {b["runtime"]: b["backend"] for b in backends(pod)}
        if set(seen) == {"one", "two"}:
            return seen
        assert time.monotonic() < deadline, f"runs after the version routing test: {seen}"
        time.sleep(0.2)


def wait_backends(pod, check, what, timeout=30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        seen = backends(pod)
        if all(check(b) for b in seen):
            return seen
        assert time.monotonic() < deadline, f"never {what}: {seen}"
        time.sleep(0.2)


def submit(pod, version_id, workflow) -> str:
    status, accepted = pod.request("POST", "/run", {"version_id": version_id, "workflow": workflow, "async": True})
    assert status == 202, accepted
    return accepted["job_id"]


def job(pod, job_id) -> dict:
    return pod.request("GET", f"/jobs/{job_id}")[1]


def wait_job(pod, job_id, check=lambda j: j["state"] in ("succeeded", "failed", "cancelled"), timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        seen = job(pod, job_id)
        if check(seen):
            return seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def submitted(j: dict) -> bool:
    return j["prompt_id"] is not None and j["backend"] is not None


def comfy_process(pod, program) -> psutil.Process:
    return psutil.Process(pod.pid(program))


def test_a_comfyui_program_per_gpu_each_pinned_to_its_gpu_and_port(pod):
    status = pod.ctl("status").stdout
    assert all(name in status for name in ("comfyui ", "comfyui-1 ")), status
    comfy0, comfy1 = comfy_process(pod, "comfyui"), comfy_process(pod, "comfyui-1")
    assert comfy0.environ()["CUDA_VISIBLE_DEVICES"] == "0" and comfy1.environ()["CUDA_VISIBLE_DEVICES"] == "1"
    assert comfy1.environ()["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # nvidia-smi's numbering
    ports = {c.laddr.port for p in (comfy0, comfy1) for c in p.net_connections("tcp") if c.status == "LISTEN"}
    assert ports == {pod.comfy_port, pod.comfy_port + 1}
    seen = wait_backends(pod, lambda b: b["ok"], "both serving")  # in whichever worker answers
    assert [(b["backend"], b["program"], b["gpu"], b["ok"]) for b in seen] == [
        (0, "comfyui", "0", True), (1, "comfyui-1", "1", True)]


def test_jobs_spread_over_idle_backends(pod):
    first = submit(pod, "one", workflows.sleep_then_save(1.5, steps=3))
    second = submit(pod, "one", workflows.sleep_then_save(1.5, steps=3))
    a, b = wait_job(pod, first, submitted), wait_job(pod, second, submitted)
    assert {a["backend"], b["backend"]} == {0, 1}
    # Both run at once: each is executing before either has finished.
    wait_job(pod, first, lambda j: j["progress"] > 0 or j["state"] != "running")
    wait_job(pod, second, lambda j: j["progress"] > 0 or j["state"] != "running")
    assert job(pod, first)["state"] == job(pod, second)["state"] == "running"
    assert wait_job(pod, first)["state"] == wait_job(pod, second)["state"] == "succeeded"


def test_a_job_for_another_version_switches_one_backend_while_the_other_serves(pod):
    slow = submit(pod, "one", workflows.sleep_then_save(3.0, steps=6))
    running = wait_job(pod, slow, submitted)
    busy = running["backend"]
    other = 1 - busy
    program = "comfyui" if busy == 0 else f"comfyui-{busy}"
    busy_pid = pod.pid(program)
    status, result = pod.request("POST", "/run", {"version_id": "two", "workflow": workflows.image(color=21)})
    assert status == 200, result
    assert result["comfy_version"] == "two" and job(pod, result["job_id"])["backend"] == other
    assert job(pod, slow)["state"] == "running"  # the switch never touched the busy backend
    finished = wait_job(pod, slow)
    assert finished["state"] == "succeeded" and finished["result"]["comfy_version"] == "one"
    assert pod.pid(program) == busy_pid
    # From now on each version goes to the backend already running it: no more restarts.
    pids = {name: pod.pid(name) for name in ("comfyui", "comfyui-1")}
    for version_id, backend in (("two", other), ("one", busy), ("two", other)):
        status, result = pod.request("POST", "/run", {"version_id": version_id, "workflow": workflows.image()})
        assert status == 200 and result["comfy_version"] == version_id
        assert job(pod, result["job_id"])["backend"] == backend
    assert {name: pod.pid(name) for name in ("comfyui", "comfyui-1")} == pids
    runtimes = versions_on_backends(pod)
    assert (runtimes["one"], runtimes["two"]) == (busy, other)


def test_killing_one_backend_mid_job_affects_only_its_job(pod):
    runtimes = versions_on_backends(pod)
    victim_backend = runtimes["two"]
    victim_program = "comfyui" if victim_backend == 0 else f"comfyui-{victim_backend}"
    survivor = submit(pod, "one", workflows.sleep_then_save(2.0, steps=4))
    doomed = submit(pod, "two", workflows.sleep_then_save(2.0, steps=4))
    assert wait_job(pod, doomed, submitted)["backend"] == victim_backend
    assert wait_job(pod, survivor, submitted)["backend"] == runtimes["one"]
    victim = pod.pid(victim_program)
    os.killpg(victim, signal.SIGKILL)

    kept = wait_job(pod, survivor)
    assert kept["state"] == "succeeded" and kept["comfy_attempts"] == 1
    retried = wait_job(pod, doomed)
    # Its prompt died with its ComfyUI: submitted again once supervisord restarted that backend.
    assert retried["state"] == "succeeded" and retried["comfy_attempts"] == 2, (retried.get("error"), retried.get("detail"), retried)
    assert retried["backend"] == victim_backend and retried["result"]["comfy_version"] == "two"
    assert pod.pid(victim_program) != victim
    wait_backends(pod, lambda b: b["ok"], "both backends serving again")


def test_a_job_on_either_backend_is_cancelled_by_either_api_worker(pod):
    # Two API workers: the DELETE may reach the job's owner (it cancels its task) or the other
    # one (it interrupts the ComfyUI the job's row names): both must stop the right ComfyUI.
    for version_id in ("one", "two"):
        job_id = submit(pod, version_id, workflows.sleep_then_save(600, steps=6000))
        running = wait_job(pod, job_id, lambda j: submitted(j) and j["progress"] > 0)
        assert pod.request("DELETE", f"/jobs/{job_id}")[0] in (200, 202)
        assert wait_job(pod, job_id, timeout=30)["state"] == "cancelled"
        # That backend is free again: the next job of its version runs there at once.
        status, result = pod.request("POST", "/run", {"version_id": version_id, "workflow": workflows.image()})
        assert status == 200 and job(pod, result["job_id"])["backend"] == running["backend"]


def program_on(pod, version_id) -> tuple[str, str]:
    """(the program running `version_id`, the other one)."""
    programs = {version: "comfyui" if b == 0 else f"comfyui-{b}" for version, b in versions_on_backends(pod).items()}
    return programs[version_id], programs["one" if version_id == "two" else "two"]


def wait_new_pid(pod, program, old, timeout=40) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = pod.pid(program)
            if pid not in (old, 0):
                return pid
        except ValueError:  # supervisorctl prints no pid while the program is down
            pass
        assert time.monotonic() < deadline, pod.ctl("status").stdout
        time.sleep(0.1)


def test_a_cuda_fault_on_one_gpu_replaces_only_its_comfyui(pod):
    faulted, other = program_on(pod, "two")
    before, other_pid = pod.pid(faulted), pod.pid(other)
    status, error = pod.request("POST", "/run", {"version_id": "two", "workflow": workflows.raising(
        "CUDA error: an illegal memory access was encountered")})
    assert (status, error["error"]) == (503, "gpu_fault"), error
    status, result = pod.request("POST", "/run", {"version_id": "one", "workflow": workflows.image(color=41)})
    assert status == 200 and result["comfy_version"] == "one"  # the other GPU serves meanwhile
    wait_new_pid(pod, faulted, before)  # a fresh process: a fresh CUDA context
    wait_backends(pod, lambda b: b["ok"] and not b["gpu_fault"], "the faulted backend back")
    assert pod.pid(other) == other_pid


def test_a_degraded_gpu_takes_only_its_backend_out(pod, smi):
    out = next(b["backend"] for b in backends(pod) if b["gpu"] == "1")
    (smi / "scenario").write_text("gpu1-ecc")
    try:
        def out_of_rotation(b):
            return not b["ok"] and b["gpu_state"] == "degraded" if b["backend"] == out else b["ok"]
        wait_backends(pod, out_of_rotation, "GPU 1 out of rotation")
        # Each API worker refreshes its own snapshot every second (and routes by it): let both see it.
        time.sleep(2)
        seen = wait_backends(pod, out_of_rotation, "GPU 1 out of rotation in every worker")
        assert "uncorrected ECC" in seen[out]["gpu_reason"]
        status, health = pod.request("GET", "/healthz")
        assert status == 200 and health["ok"] is True  # the other backend serves
        assert pod.request("GET", "/readyz")[0] == 200
        # Every job goes to the healthy backend, even one for the version only the degraded one runs.
        for version_id in ("two", "one"):
            status, result = pod.request("POST", "/run", {"version_id": version_id, "workflow": workflows.image()})
            assert status == 200 and result["comfy_version"] == version_id
            assert job(pod, result["job_id"])["backend"] != out
    finally:
        (smi / "scenario").write_text("healthy")
    wait_backends(pod, lambda b: b["ok"], "GPU 1 back in rotation")


# ---- opt-in: two real ComfyUI processes on the CPU (make test-real COMFYUI_DIR=...) ---------------
@pytest.fixture(scope="module")
def real_pod(tmp_path_factory):
    if KIND != "real":
        pytest.skip("opt-in: `make test-real COMFYUI_DIR=...` runs this against two real ComfyUI processes")
    root = tmp_path_factory.mktemp("multi-gpu-real")
    # The fault and sleep nodes the stand-in has, written for ComfyUI (tests/fixtures/comfy_nodes).
    nodes = root / "test_nodes.yaml"
    nodes.write_text(json.dumps({"tests": {"base_path": str(root), "custom_nodes": str(CUSTOM_NODES)}}))
    env = {"COMFY_GPUS": "2", "COMFY_HOME": REAL_DIR, "COMFY_PYTHON": real_python(), "API_WORKERS": "2",
           "COMFY_EXTRA_ARGS": f"--extra-model-paths-config {nodes}", "LOG_SILENT": "1"}
    pod = start_pod(root, env=env)  # healthy once one backend serves
    try:
        wait_backends(pod, lambda b: b["ok"], "both real backends serving", timeout=240)
        yield pod
    finally:
        pod.stop()


@pytest.mark.comfy
def test_two_real_comfyui_backends_share_the_jobs_and_one_killed_comes_back(real_pod):
    pod = real_pod
    first = submit(pod, "demo", workflows.sleep_then_save(3.0, steps=3))
    second = submit(pod, "demo", workflows.sleep_then_save(3.0, steps=3))
    a, b = wait_job(pod, first, submitted), wait_job(pod, second, submitted)
    assert {a["backend"], b["backend"]} == {0, 1}
    doomed, survivor = (first, second) if a["backend"] == 1 else (second, first)
    victim = pod.pid("comfyui-1")
    wait_job(pod, doomed, lambda j: j["progress"] > 0 or j["state"] != "running")
    os.killpg(victim, signal.SIGKILL)
    kept = wait_job(pod, survivor, timeout=120)
    assert kept["state"] == "succeeded" and kept["comfy_attempts"] == 1, kept
    retried = wait_job(pod, doomed, timeout=240)
    assert retried["state"] == "succeeded" and retried["comfy_attempts"] == 2, retried
    assert pod.pid("comfyui-1") != victim
    wait_backends(pod, lambda b: b["ok"], "the killed backend serving again", timeout=240)
