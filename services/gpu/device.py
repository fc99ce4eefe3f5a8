"""Whether ComfyUI must be told `--cpu`: a Linux machine with no GPU that torch could use.

ComfyUI started without `--cpu` on such a machine dies at start-up (its CUDA build of torch
finds no driver), so a laptop or a CPU-only Pod would never serve. The check is a few stat()
calls on device nodes, never an import of torch or a run of nvidia-smi, because it happens
on every ComfyUI start. Any node that a GPU stack uses counts as a GPU: NVIDIA's (a container
only gets the ones of the GPUs it was given, but always `nvidiactl`), ROCm's `kfd`, and WSL's
`dxg` (CUDA through the Windows driver). Off Linux nothing is added: on macOS ComfyUI picks
MPS or the CPU itself.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

DEV = Path("/dev")
GPU_NODES = ("nvidiactl", "kfd", "dxg")
CPU_FLAG = "--cpu"


def has_gpu(dev: Path = DEV, platform: str = sys.platform) -> bool:
    if not platform.startswith("linux"):
        return True  # nothing to decide here: ComfyUI chooses its own device
    return any((dev / name).exists() for name in GPU_NODES) or any(dev.glob("nvidia[0-9]*"))


def comfy_args(args: Sequence[str], choice: str | bool, dev: Path = DEV, platform: str = sys.platform) -> list[str]:
    """`args` plus `--cpu` when `choice` (COMFY_CPU: "auto", True or False) asks for it; never twice,
    and `False` only means nothing is added (COMFY_EXTRA_ARGS or a spec may still say `--cpu`)."""
    wanted = choice is True or (choice == "auto" and not has_gpu(dev, platform))
    return [*args, CPU_FLAG] if wanted and CPU_FLAG not in args else list(args)
