"""The supervisord sections of Pod mode's ComfyUI programs, one per backend (COMFY_GPUS).

supervisord's config has no loop, and its `numprocs` would rename the one-GPU Pod's `comfyui`
program to `comfyui:comfyui_0` (every `supervisorctl restart comfyui` in an ops runbook would
break). So `python -m services.pod` fills etc/comfyui-program.conf in once per backend and
writes the result beside supervisord's socket, where etc/supervisord.conf includes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from services import atomic_file
from services.comfy.backends import Backend

TEMPLATE = "comfyui-program.conf"
INCLUDED = "comfyui-programs.conf"


def render(template: str, backends: Sequence[Backend]) -> str:
    return "\n".join(template.format(program=b.program, index=b.index) for b in backends)


def write(config_dir: Path, private_dir: Path, backends: Sequence[Backend]) -> Path:
    target = private_dir / INCLUDED
    atomic_file.write_text(target, render((config_dir / TEMPLATE).read_text(), backends))
    return target
