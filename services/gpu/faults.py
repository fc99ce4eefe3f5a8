"""Which failures mean the GPU is broken for this process, not that the job was bad.

CUDA reports some errors as *sticky*: after an illegal memory access, a device-side assert or
a launch failure, the CUDA context of the process is corrupt and every later CUDA call fails
the same way until the process ends (CUDA's own documentation of `cudaError_t`: "the process
must be terminated and relaunched"). A ComfyUI that met one fails every later job, so such a
failure is `gpu_fault`: the worker is broken, not the job. Everything else a node raises stays
the job's own error; running out of memory above all, which ComfyUI recovers from by unloading
its models, and whose messages mention CUDA too ("CUDA out of memory", "CUDA error: out of
memory"), so it is matched first.

The text matched is what ComfyUI reports for a failed node (`exception_type`, and
`exception_message` = `str(exception)`, see services/comfy/history.py) and what a failed
`nvidia-smi` printed (services/gpu/state.py). Each pattern names its fault with a fixed
`name`, so a latch or a log can say which fault it was without repeating a job's own text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    code: str  # an errors.py catalogue prefix: "out_of_memory" or "gpu_fault"
    name: str  # what was recognised, fixed text from this table


# torch's exception for a failed allocation, and "out of memory" in any spelling: torch's
# "CUDA out of memory. Tried to allocate ...", "CUDA error: out of memory" (a cudaMalloc outside
# the caching allocator, raised as torch.AcceleratorError), ComfyUI's own "... (out of memory)".
_OOM_TYPE = "OutOfMemoryError"
_OOM_TEXT = "out of memory"

# The sticky cudaError_t values, by the text cudaGetErrorString() gives them (CUDA 13's
# libcudart) and their enum name. torch raises "CUDA error: <text>" (c10_cuda_check) or "CUDA
# driver error: <text>" (driver API calls), newer torch adds "Search for `<name>'", and Triton
# raises "Triton Error [CUDA]: <text>". Deliberately absent: errors that leave the context
# usable and are the job's own doing, such as "invalid argument", "too many resources requested
# for launch" and "no kernel image is available for execution on the device".
_STICKY_CUDA = (
    ("cudaErrorIllegalAddress", "an illegal memory access was encountered"),
    ("cudaErrorAssert", "device-side assert triggered"),
    ("cudaErrorLaunchFailure", "unspecified launch failure"),
    ("cudaErrorIllegalInstruction", "an illegal instruction was encountered"),
    ("cudaErrorMisalignedAddress", "misaligned address"),
    ("cudaErrorHardwareStackError", "hardware stack error"),
    ("cudaErrorInvalidPc", "invalid program counter"),
    ("cudaErrorInvalidAddressSpace", "operation not supported on global/shared address space"),
    ("cudaErrorLaunchTimeout", "the launch timed out and was terminated"),
    ("cudaErrorECCUncorrectable", "uncorrectable ECC error encountered"),
    ("cudaErrorNvlinkUncorrectable", "uncorrectable NVLink error detected during the execution"),
    ("cudaErrorContained", "Invalid access of peer GPU memory over nvlink or a hardware error"),
    # Only with one of the prefixes: "unknown error" alone is any library's shrug.
    ("cudaErrorUnknown", "unknown error"),
)
_CUDA_PREFIX = r"(?:CUDA (?:driver )?error|Triton Error \[CUDA\]): "

# Other symptoms of a broken GPU or driver, each with why it is not the job's fault.
_OTHER = (
    # cuBLAS/cuDNN report a kernel that failed on the GPU; in practice the sticky error of an
    # earlier kernel surfacing in the next library call. Their other statuses (ALLOC_FAILED,
    # NOT_SUPPORTED, BAD_PARAM, INTERNAL_ERROR) follow from the job's shapes or memory and stay
    # per-job errors. cuDNN 9 adds suffixes (_CUDART, _CUDA_DRIVER, _CUBLAS, _CURAND).
    ("CUBLAS_STATUS_EXECUTION_FAILED", r"CUBLAS_STATUS_EXECUTION_FAILED"),
    ("CUDNN_STATUS_EXECUTION_FAILED", r"CUDNN_STATUS_EXECUTION_FAILED"),
    # NVML, the driver's management library (nvidia-smi, torch's allocator): a GPU that fell off
    # the bus (Xid 79) or was lost is gone until the machine is reset, and nvidia-smi then
    # cannot get a handle to it ("Unable to determine the device handle for GPU...: Unknown
    # Error"). A kernel module that no longer matches the user-space driver ("Driver/library
    # version mismatch", torch's failed `nvmlInit_v2_()` assert) needs a reboot. Not matched:
    # torch's "NVML_SUCCESS == r INTERNAL ASSERT FAILED" from its out-of-memory path
    # (pytorch/pytorch#112377) and nvmlDeviceGetHandleByPciBusId asserts (a MIG device named
    # wrongly in CUDA_VISIBLE_DEVICES): neither says the GPU broke.
    ("GPU is lost", r"GPU is lost"),
    ("GPU has fallen off the bus", r"fallen off the bus"),
    ("no NVML handle for the GPU", r"Unable to determine the device handle"),
    ("NVML driver/library version mismatch", r"Driver/library version mismatch"),
    ("NVML failed to initialise", r"nvmlInit_v2_\(\) INTERNAL ASSERT FAILED"),
)

_FAULTS = tuple(
    [(f"{text} ({name})", re.compile(rf"{_CUDA_PREFIX}{re.escape(text)}|\b{name}\b")) for name, text in _STICKY_CUDA]
    + [(name, re.compile(pattern)) for name, pattern in _OTHER])


def classify(message: str, exception_type: str = "") -> Fault | None:
    """The fault `message` (and the exception's type name) reports, or None for an error that
    is the job's own. torch.AcceleratorError alone decides nothing: torch raises it for every
    failed CUDA call, the job's own invalid arguments included; its message does."""
    if exception_type.endswith(_OOM_TYPE) or _OOM_TEXT in message.lower():
        return Fault("out_of_memory", _OOM_TEXT)
    for name, pattern in _FAULTS:
        if pattern.search(message):
            return Fault("gpu_fault", name)
    return None
