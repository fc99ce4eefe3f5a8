"""GPU faults end to end, with real processes: the serverless worker through RunPod's production
loop, and Pod mode's /healthz through supervisord, gpuwatch and gunicorn. The stand-in's
StandinRaise raises a node error with the text a real CUDA fault carries."""
import asyncio
import json
import os
import time
import urllib.error
import urllib.request

import pytest

from services.comfy.client import ComfyClient
from services.errors import AppError
from services.gpu import fault_latch
from tests import workflows
from tests.fake_runpod import FakeRunPod
from tests.pod_process import FIXTURES, start_pod
from tests.standin_process import write_fake_comfy_home
from tests.test_serverless import Handler

pytestmark = pytest.mark.comfy

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"
OOM = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB"


@pytest.mark.parametrize("message,code", [(ILLEGAL_ACCESS, "gpu_fault"), (OOM, "out_of_memory")])
def test_comfyui_reports_a_node_fault_in_the_shape_we_classify(comfy, message, code):
    """The stand-in, or with COMFYUI_DIR a real ComfyUI running tests/fixtures/comfy_nodes: the
    node's RuntimeError lands in history as execution.py writes it, and maps to `code`."""
    async def execute():
        client = ComfyClient(comfy.url)
        try:
            prompt_id = await client.submit(workflows.raising(message))
            with pytest.raises(AppError) as failed:
                await client.wait(prompt_id, prompt=workflows.raising(message))
            return prompt_id, failed.value
        finally:
            await client.close()

    prompt_id, error = asyncio.run(execute())
    assert (error.code, error.detail) == (code, f"node 1 (StandinRaise): {message}")
    with urllib.request.urlopen(f"{comfy.url}/history/{prompt_id}", timeout=10) as resp:
        entry = json.loads(resp.read())[prompt_id]
    event, data = entry["status"]["messages"][-1]
    assert (event, entry["status"]["status_str"]) == ("execution_error", "error")
    assert (data["exception_type"], data["exception_message"], data["node_type"]) == ("RuntimeError", message + "\n", "StandinRaise")


def test_serverless_worker_latches_a_gpu_fault_and_asks_to_be_replaced(tmp_path):
    with FakeRunPod() as fake:
        h = Handler(tmp_path, env=fake.env(), api=False)
        try:
            # Out of memory is the job's own: the worker keeps serving.
            fake.add_job("oom", {"workflow": workflows.raising(OOM)})
            oom = fake.final("oom")
            assert oom["error"].startswith("out_of_memory: node 1 (StandinRaise): CUDA out of memory") and "stopPod" not in oom
            fake.add_job("after-oom", {"workflow": workflows.image(color=21)})
            assert "error" not in fake.final("after-oom")

            fake.add_job("fault", {"workflow": workflows.raising(ILLEGAL_ACCESS)})
            fault = fake.final("fault")
            assert fault["error"] == f"gpu_fault: node 1 (StandinRaise): {ILLEGAL_ACCESS}"
            assert fault["stopPod"] is True
            assert fault["output"]["fault"] == "an illegal memory access was encountered (cudaErrorIllegalAddress)"

            # Until RunPod replaces it, the worker runs nothing on its broken GPU.
            fake.add_job("refused", {"workflow": workflows.image(color=22)})
            refused = fake.final("refused")
            assert refused["error"] == ("gpu_fault: an earlier job on this worker failed with gpu_fault "
                                        "(an illegal memory access was encountered (cudaErrorIllegalAddress)); "
                                        "it runs no more jobs")
            assert refused["stopPod"] is True and "outputs" not in refused.get("output", {})
            assert h.proc.poll() is None
        finally:
            h.stop()


# ---- Pod mode ---------------------------------------------------------------------------------

# ComfyUI waits for this file before it starts, so a test sees it `starting` for as long as it likes.
_HELD_MAIN = """import pathlib, time
while not pathlib.Path(__file__).with_name("release").exists():
    time.sleep(0.1)
"""


def _smi_script(path, query: str | None, status: int = 0) -> None:
    """Make the Pod's nvidia-smi print `query` (and no compute apps) and exit with `status`;
    `query=None` removes it, as on a machine without the NVIDIA driver."""
    if query is None:
        path.unlink(missing_ok=True)
        return
    data = path.with_name("smi-output.csv")
    data.write_text(query)
    tmp = path.with_name(".nvidia-smi")
    tmp.write_text(f"#!/bin/sh\ncase \"$*\" in *compute-apps*) ;; *) cat {data};; esac\nexit {status}\n")
    tmp.chmod(0o755)
    os.replace(tmp, path)  # gpuwatch never runs half a script


def _health(pod, until, timeout=30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pod.request("GET", "/healthz", timeout=2)
            if until(*last):
                return last
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"/healthz never matched: {last}\n{pod.log()[-3000:]}")


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """A Pod whose ComfyUI is held back at first: yields it running, with the /healthz answer
    seen while ComfyUI was starting."""
    root = tmp_path_factory.mktemp("gpu-pod")
    main_py = write_fake_comfy_home(root / "ComfyUI")
    main_py.write_text(_HELD_MAIN + main_py.read_text())
    pod = start_pod(root, comfy_home="missing", wait=False)  # "missing": start_pod writes no main.py of its own
    try:
        pod.wait_running()
        starting = _health(pod, lambda status, body: body.get("comfy", {}).get("state") == "starting"
                           and body["programs"]["comfyui"]["state"] == "RUNNING")
        (root / "ComfyUI" / "release").touch()
        pod.wait_healthy(60)
        pod.extra["starting"] = starting
        yield pod
    finally:
        pod.stop()


def test_healthz_says_starting_while_comfyui_has_not_answered_yet(pod):
    status, body = pod.extra["starting"]
    assert status == 503 and body["ok"] is False
    assert body["comfy"]["reason"].startswith("comfyui program is RUNNING (pid ")
    assert body["comfy"]["reason"].endswith("; ComfyUI does not answer yet")
    assert body["programs"]["comfyui"]["uptime"] >= 0 and body["gpu_fault"] is None
    status, body = pod.request("GET", "/healthz")
    assert status == 200 and body["comfy"]["state"] == "ready" and body["gpu"]["state"] == "ok"


def test_a_latched_gpu_fault_makes_healthz_503_until_cleared(pod):
    run_dir = pod.root / "data" / "run"
    reason = "gpu_fault: an illegal memory access was encountered (cudaErrorIllegalAddress)"
    fault_latch.latch(run_dir, reason)
    try:
        status, body = _health(pod, lambda status, body: status == 503)
        assert body["ok"] is False and body["gpu_fault"]["reason"] == reason and body["gpu_fault"]["at"] > 0
        assert body["comfy"]["state"] == "ready" and body["comfy"]["reason"] == f"gpu_fault: {reason}"
        ready_status, ready = pod.request("GET", "/readyz")
        assert ready_status == 503 and ready["reasons"]["gpu_fault"] == reason
    finally:
        fault_latch.clear(run_dir)
    status, body = _health(pod, lambda status, body: status == 200)
    assert body["gpu_fault"] is None and "reason" not in body["comfy"]


def _degraded_query() -> str:
    # The recorded idle H100, with 2 uncorrected ECC errors (ecc.errors.uncorrected.volatile.total).
    fields = (FIXTURES / "nvidia-smi" / "h100-idle-query.csv").read_text().strip().split(", ")
    fields[16] = "2"
    return ", ".join(fields) + "\n"


@pytest.mark.parametrize("query,exit_status,state,reason", [
    (_degraded_query(), 0, "degraded", "GPU 0: 2 uncorrected ECC errors"),
    # nvidia-smi after Xid 79: exit status 15, the GPU fell off the bus.
    ("Unable to determine the device handle for GPU0000:06:00.0: Unknown Error\n", 15, "degraded",
     "nvidia-smi failed (15): Unable to determine the device handle for GPU0000:06:00.0: Unknown Error"),
])
def test_a_degraded_gpu_makes_healthz_503(pod, query, exit_status, state, reason):
    smi = pod.root / "nvidia-smi"
    recorded = (FIXTURES / "nvidia-smi" / "h100-idle-query.csv").read_text()
    _smi_script(smi, query, exit_status)
    try:
        status, body = _health(pod, lambda status, body: body["gpu"]["state"] == state)
        assert status == 503 and body["ok"] is False and body["gpu"]["reason"] == reason
        assert body["comfy"]["state"] == "ready" and body["gpu_fault"] is None
    finally:
        _smi_script(smi, recorded)
    _health(pod, lambda status, body: status == 200 and body["gpu"]["state"] == "ok")


def test_a_machine_without_a_gpu_stays_healthy(pod):
    smi = pod.root / "nvidia-smi"
    _smi_script(smi, None)
    try:
        status, body = _health(pod, lambda status, body: body["gpu"]["state"] == "absent")
        assert status == 200 and body["ok"] is True
        assert body["gpu"]["reason"] == "nvidia-smi not found (no NVIDIA driver)"
    finally:
        _smi_script(smi, (FIXTURES / "nvidia-smi" / "h100-idle-query.csv").read_text())
