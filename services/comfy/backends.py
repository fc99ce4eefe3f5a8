"""Pod mode's ComfyUI backends: one ComfyUI program per GPU (COMFY_GPUS), behind the one API.

ComfyUI runs one prompt at a time on one GPU, so a Pod with N GPUs runs N ComfyUI programs.
Each backend is pinned to its GPU (`CUDA_VISIBLE_DEVICES`, in nvidia-smi's PCI order so that
gpuwatch's GPU index names the same device), listens on its own loopback port and keeps its
own small state files (wanted runtime, restart back-off, start failure, fault latch, start-up
ledger) in its own run folder. They share the model cache and the input/output folders: every
job has its own subfolders there already.

Backend 0 is exactly what a one-GPU Pod always ran: the `comfyui` program on COMFY_PORT with
its files in RUN_DIR, so a Pod with one GPU (or none) behaves and looks as before.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

DEV = Path("/dev")
PROGRAM = "comfyui"


@dataclass(frozen=True)
class Backend:
    index: int
    gpu: str | None       # a CUDA_VISIBLE_DEVICES entry (index or UUID); None: the machine's own choice
    program: str          # its supervisord program
    port: int
    url: str              # where the API reaches it
    run_dir: Path         # its state files

    def settings(self, settings):
        """The settings as this backend's own programs see them (its port and run folder)."""
        return settings.replace(comfy_port=self.port, run_dir=self.run_dir)

    def env(self) -> dict[str, str]:
        """What pins the backend's ComfyUI to its GPU."""
        if self.gpu is None:
            return {}
        return {"CUDA_VISIBLE_DEVICES": self.gpu, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    @property
    def temp_name(self) -> str | None:
        """ComfyUI empties its temp folder when it starts: each backend needs its own, or one
        restarting would delete the previews of another's running job. None: the shared folder."""
        return None if self.index == 0 else f"{PROGRAM}-{self.index}"


def plan(settings, dev: Path = DEV, environ: Mapping[str, str] | None = None) -> tuple[Backend, ...]:
    """The Pod's backends. An external ComfyUI (COMFY_URL) is one backend whatever COMFY_GPUS says."""
    if settings.comfy_url:
        return (_backend(settings, 0, None),)
    choice = settings.comfy_gpus
    if choice == "auto":
        gpus: list[str | None] = list(visible_gpus(dev, os.environ if environ is None else environ)) or [None]
    elif isinstance(choice, int):
        gpus = [str(i) for i in range(choice)]
    else:
        gpus = list(choice)
    return tuple(_backend(settings, i, gpu) for i, gpu in enumerate(gpus))


def _backend(settings, index: int, gpu: str | None) -> Backend:
    program = PROGRAM if index == 0 else f"{PROGRAM}-{index}"
    run_dir = settings.run_dir if index == 0 else settings.run_dir / program
    port = settings.comfy_port + index
    url = settings.comfy_url or f"http://{settings.comfy_host}:{port}"
    return Backend(index, gpu, program, port, url, run_dir)


def visible_gpus(dev: Path, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The GPUs this container may use: CUDA_VISIBLE_DEVICES when set, else one per NVIDIA
    device node (a container only gets the nodes of its own GPUs; CUDA numbers them from 0)."""
    chosen = environ.get("CUDA_VISIBLE_DEVICES")
    if chosen is not None and chosen.strip():
        return tuple(part.strip() for part in chosen.split(",") if part.strip() and part.strip() != "-1")
    nodes = [p for p in dev.glob("nvidia[0-9]*") if re.fullmatch(r"nvidia[0-9]+", p.name)]
    return tuple(str(i) for i in range(len(nodes)))


def by_program(backends: tuple[Backend, ...]) -> dict[str, Backend]:
    return {b.program: b for b in backends}
