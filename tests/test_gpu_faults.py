"""GPU faults without processes: which node failures are `gpu_fault`, the latch file, gpuwatch's
verdict on a failing or hanging nvidia-smi, and /healthz's ComfyUI state."""
import json

import pytest

from services.api.health import comfy_down_state
from services.comfy.history import execution_error
from services.gpu import fault_latch, faults, nvidia_smi, state

# What torch puts after a failed CUDA call's text (c10_cuda_check_implementation), and what
# torch >= 2.8 adds before it: messages as a node's str(exception) carries them.
_SUFFIX = ("\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace "
           "below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
           "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")


def _search_for(name: str) -> str:
    return (f"\nSearch for `{name}' in https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html "
            "for more information.")


@pytest.mark.parametrize("exc_type,message,name", [
    ("torch.AcceleratorError", "CUDA error: an illegal memory access was encountered"
     + _search_for("cudaErrorIllegalAddress") + _SUFFIX, "an illegal memory access was encountered (cudaErrorIllegalAddress)"),
    ("RuntimeError", "CUDA error: an illegal memory access was encountered" + _SUFFIX,
     "an illegal memory access was encountered (cudaErrorIllegalAddress)"),
    ("RuntimeError", "CUDA error: device-side assert triggered" + _SUFFIX, "device-side assert triggered (cudaErrorAssert)"),
    ("torch.AcceleratorError", "CUDA error: unspecified launch failure" + _search_for("cudaErrorLaunchFailure") + _SUFFIX,
     "unspecified launch failure (cudaErrorLaunchFailure)"),
    ("RuntimeError", "CUDA error: misaligned address" + _SUFFIX, "misaligned address (cudaErrorMisalignedAddress)"),
    ("RuntimeError", "CUDA error: uncorrectable ECC error encountered" + _SUFFIX,
     "uncorrectable ECC error encountered (cudaErrorECCUncorrectable)"),
    ("RuntimeError", "CUDA error: unknown error" + _SUFFIX, "unknown error (cudaErrorUnknown)"),
    ("RuntimeError", "CUDA driver error: an illegal memory access was encountered",
     "an illegal memory access was encountered (cudaErrorIllegalAddress)"),
    ("RuntimeError", "Triton Error [CUDA]: an illegal memory access was encountered",
     "an illegal memory access was encountered (cudaErrorIllegalAddress)"),
    ("RuntimeError", "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, opa, opb, m, n, "
     "k, &falpha, a, CUDA_R_16F, lda, b, CUDA_R_16F, ldb, &fbeta, c, CUDA_R_16F, ldc, compute_type, "
     "CUBLAS_GEMM_DEFAULT_TENSOR_OP)`", "CUBLAS_STATUS_EXECUTION_FAILED"),
    ("torch._C._cudnn.CuDNNError", "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED", "CUDNN_STATUS_EXECUTION_FAILED"),
    ("RuntimeError", "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED_CUDART", "CUDNN_STATUS_EXECUTION_FAILED"),
    ("RuntimeError", 'NVML_SUCCESS == DriverAPI::get()->nvmlInit_v2_() INTERNAL ASSERT FAILED at '
     '"../c10/cuda/CUDACachingAllocator.cpp":1123, please report a bug to PyTorch. ', "NVML failed to initialise"),
    # nvidia-smi's own lines (gpuwatch's reasons) after Xid 79 and a driver upgrade.
    ("", "nvidia-smi failed (15): Unable to determine the device handle for GPU0000:06:00.0: Unknown Error",
     "no NVML handle for the GPU"),
    ("", "nvidia-smi failed (255): Unable to determine the device handle for gpu 0000:06:00.0: GPU is lost.  "
     "Reboot the system to recover this GPU", "GPU is lost"),
    ("", "nvidia-smi failed (18): Failed to initialize NVML: Driver/library version mismatch",
     "NVML driver/library version mismatch"),
])
def test_sticky_cuda_errors_and_lost_gpus_are_gpu_faults(exc_type, message, name):
    assert faults.classify(message, exc_type) == faults.Fault("gpu_fault", name)


@pytest.mark.parametrize("exc_type,message", [
    ("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
     "79.19 GiB of which 9.44 GiB is free. Including non-PyTorch memory, this process has 69.74 GiB memory in use. "
     "Of the allocated memory 68.90 GiB is allocated by PyTorch, and 312.00 MiB is reserved by PyTorch but "
     "unallocated.\nThis error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before "
     "you might have accidentally set the batch_size to a large number.\n"),
    ("torch.AcceleratorError", "CUDA error: out of memory" + _search_for("cudaErrorMemoryAllocation") + _SUFFIX),
    ("RuntimeError", "Allocation on device 0 would exceed allowed memory. (out of memory)"),
    # The driver API's spelling (expandable segments): CUDA's prefix, but memory comes first.
    ("RuntimeError", "CUDA driver error: out of memory"),
])
def test_out_of_memory_stays_a_per_job_error(exc_type, message):
    assert faults.classify(message, exc_type).code == "out_of_memory"


@pytest.mark.parametrize("exc_type,message", [
    # The job's own mistakes, raised through the same CUDA checks (torch.AcceleratorError too).
    ("torch.AcceleratorError", "CUDA error: invalid argument" + _search_for("cudaErrorInvalidValue") + _SUFFIX),
    ("RuntimeError", "CUDA error: no kernel image is available for execution on the device" + _SUFFIX),
    ("RuntimeError", "CUDA error: too many resources requested for launch" + _SUFFIX),
    ("RuntimeError", "CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling `cublasGemmStridedBatchedEx(handle)`"),
    ("RuntimeError", "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    ("RuntimeError", "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "
     "non-contiguous input."),
    ("RuntimeError", "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    # torch's out-of-memory path and a misnamed MIG device, not broken GPUs.
    ("RuntimeError", 'NVML_SUCCESS == r INTERNAL ASSERT FAILED at "../c10/cuda/CUDACachingAllocator.cpp":830, '
     "please report a bug to PyTorch. "),
    ("RuntimeError", "NVML_SUCCESS == DriverAPI::get()->nvmlDeviceGetHandleByPciBusId_v2_( pci_id, &nvml_device) "
     'INTERNAL ASSERT FAILED at "../c10/cuda/CUDACachingAllocator.cpp":815, please report a bug to PyTorch. '),
    ("RuntimeError", "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"),
    ("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (1x77 and 768x320)"),
    ("AssertionError", "Torch not compiled with CUDA enabled"),
    # The sticky texts alone, without CUDA's prefix, are anybody's words.
    ("ValueError", "unknown error"),
    ("ValueError", "misaligned address in the header"),
    ("RuntimeError", "StandinRaise failed on purpose"),
    ("", "nvidia-smi failed (9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
])
def test_other_errors_are_the_jobs_own(exc_type, message):
    assert faults.classify(message, exc_type) is None


def _execution_error(exc_type, message):
    # The payload ComfyUI sends and stores for a node that raised (execution.py: exception_type
    # is the type's module-qualified name, exception_message "{ex}\n{tips}").
    return execution_error({"prompt_id": "p1", "node_id": "3", "node_type": "KSampler", "executed": ["1"],
                            "exception_type": exc_type, "exception_message": message + "\n",
                            "traceback": [], "current_inputs": {}, "current_outputs": {}})


def test_a_sticky_cuda_error_in_history_is_a_fatal_gpu_fault():
    error = _execution_error("torch.AcceleratorError", "CUDA error: an illegal memory access was encountered" + _SUFFIX)
    assert (error.code, error.status, error.fatal) == ("gpu_fault", 503, True)
    assert error.detail == "node 3 (KSampler): CUDA error: an illegal memory access was encountered"
    assert error.extra["fault"] == "an illegal memory access was encountered (cudaErrorIllegalAddress)"
    assert error.extra["exception_type"] == "torch.AcceleratorError"


def test_oom_and_ordinary_failures_keep_their_codes():
    oom = _execution_error("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert (oom.code, oom.fatal) == ("out_of_memory", False)
    plain = _execution_error("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (1x77 and 768x320)")
    assert (plain.code, plain.fatal, "fault" in plain.extra) == ("execution_error:KSampler", False, False)


def test_latch_read_clear(tmp_path):
    assert fault_latch.read(tmp_path) is None
    fault_latch.latch(tmp_path, "gpu_fault: node 3 (KSampler):\n CUDA error: an illegal memory access")
    latched = fault_latch.read(tmp_path)
    assert latched["reason"] == "gpu_fault: node 3 (KSampler): CUDA error: an illegal memory access"
    assert isinstance(latched["at"], float)
    fault_latch.latch(tmp_path, "a later echo of the same broken context")  # the first fault stays
    assert fault_latch.read(tmp_path) == latched
    fault_latch.clear(tmp_path)
    assert fault_latch.read(tmp_path) is None
    fault_latch.clear(tmp_path)  # clearing nothing is fine


def test_latch_is_one_bounded_line_in_an_atomic_json_file(tmp_path):
    fault_latch.latch(tmp_path / "run", "x" * 5000)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [fault_latch.FILENAME]  # no temp file left
    entry = json.loads((tmp_path / "run" / fault_latch.FILENAME).read_text())
    assert entry["reason"] == "x" * fault_latch.MAX_REASON


def test_a_damaged_latch_file_still_latches(tmp_path):
    (tmp_path / fault_latch.FILENAME).write_text("{half")
    assert fault_latch.read(tmp_path)["reason"] == f"malformed {fault_latch.FILENAME}"


def _fake_smi(tmp_path, body: str):
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("body,expected", [
    # Exit status 15: "a GPU has fallen off the bus or has otherwise become inaccessible".
    ("echo 'Unable to determine the device handle for GPU0000:06:00.0: Unknown Error'; exit 15", "degraded"),
    ("echo 'Failed to initialize NVML: Driver/library version mismatch'; exit 18", "degraded"),
    ("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.' >&2; exit 9", "unknown"),
])
def test_gpuwatch_names_a_lost_gpu_degraded_and_a_confused_tool_unknown(tmp_path, body, expected):
    snapshot = state.probe(_fake_smi(tmp_path, body), 5, [])
    assert snapshot["state"] == expected and snapshot["reason"].startswith("nvidia-smi failed")
    assert "hung" not in snapshot


def test_a_hanging_nvidia_smi_is_unknown_until_it_has_hung_for_a_minute(tmp_path):
    snapshot = state.probe(_fake_smi(tmp_path, "exec sleep 30"), 0.3, [])
    assert (snapshot["state"], snapshot["hung"]) == ("unknown", True)
    assert snapshot["reason"] == "nvidia-smi did not answer within 0.3 s"

    def hung_at(t):
        return {"checked_at": t, "state": "unknown", "reason": "nvidia-smi did not answer within 5 s", "hung": True}

    since = None
    for t in (1000.0, 1010.0, 1059.0):
        probe = hung_at(t)
        since = state.escalate_hang(probe, since)
        assert (since, probe["state"]) == (1000.0, "unknown")
    probe = hung_at(1060.0)
    assert state.escalate_hang(probe, since) == 1000.0
    assert (probe["state"], probe["reason"]) == ("degraded", "nvidia-smi did not answer within 5 s, on every probe for 60 s")
    answered = {"checked_at": 1070.0, "state": "ok", "reason": ""}
    assert state.escalate_hang(answered, since) is None and answered["state"] == "ok"


def test_the_gpu_lost_exit_status_is_degraded_by_itself(tmp_path):
    with pytest.raises(nvidia_smi.ProbeFailed) as failed:
        nvidia_smi.run([_fake_smi(tmp_path, "exit 15")], 5)
    assert (failed.value.state, failed.value.hung) == ("degraded", False)


def _program(state_name, pid=41, uptime=5, description="pid 41, uptime 0:00:05"):
    return {"state": state_name, "pid": pid, "description": description, "uptime": uptime}


@pytest.mark.parametrize("failure,program,answered_pid,expected", [
    (None, _program("STARTING", description=""), None, ("starting", "comfyui program is STARTING")),
    (None, _program("BACKOFF", pid=None, description="Exited too quickly (process log may have details)"), None,
     ("starting", "comfyui program is BACKOFF: Exited too quickly (process log may have details)")),
    (None, _program("RUNNING"), None,
     ("starting", "comfyui program is RUNNING (pid 41, uptime 0:00:05); ComfyUI does not answer yet")),
    (None, _program("RUNNING", pid=52, description="pid 52, uptime 0:00:05"), 41,  # restarted since it answered
     ("starting", "comfyui program is RUNNING (pid 52, uptime 0:00:05); ComfyUI does not answer yet")),
    (None, _program("RUNNING"), 41,
     ("down", "comfyui program is RUNNING (pid 41, uptime 0:00:05) but ComfyUI stopped answering")),
    (None, _program("RUNNING", uptime=601), None,
     ("down", "comfyui program is RUNNING (pid 41, uptime 0:00:05) but ComfyUI has not answered within "
              "COMFY_START_TIMEOUT (600 s)")),
    (None, _program("EXITED", pid=None, description="Dec 01 08:33 PM"), 41,  # killed: autorestart is at hand
     ("starting", "comfyui program is EXITED: Dec 01 08:33 PM")),
    (None, _program("FATAL", pid=None, description="Exited too quickly (process log may have details)"), None,
     ("down", "comfyui program is FATAL: Exited too quickly (process log may have details)")),
    ("comfy_init_failed:no_comfy_home: COMFY_HOME /x does not exist", _program("BACKOFF"), None,
     ("down", "comfy_init_failed:no_comfy_home: COMFY_HOME /x does not exist")),
    (None, None, None, ("down", "ComfyUI does not answer")),  # no supervisord (or it did not answer)
])
def test_comfy_state_when_it_does_not_answer(failure, program, answered_pid, expected):
    assert comfy_down_state(failure, program, answered_pid, 600.0) == expected
