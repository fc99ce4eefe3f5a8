"""Which ComfyUI the comfy-facing tests talk to: the stand-in (default, CI) or a real ComfyUI
checkout when `COMFYUI_DIR` names one (`make test-real`; `COMFYUI_PYTHON` picks its
interpreter, default: `COMFYUI_DIR/../venv/bin/python` if present, else this one).

Both are real processes started with the argv our launcher uses; the real one also loads
tests/fixtures/comfy_nodes (the stand-in's fault nodes written for ComfyUI) so the same tests
run unchanged against it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.model_types import CANONICAL
from tests.standin_process import REPO_ROOT, StandinProcess, free_port, start_standin, wait_answering

REAL_DIR = os.environ.get("COMFYUI_DIR")
CUSTOM_NODES = REPO_ROOT / "tests" / "fixtures" / "comfy_nodes"


def real_python() -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv = Path(REAL_DIR).resolve().parent / "venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def start_real(tmp_path: Path, ready_timeout: float = 180.0) -> StandinProcess:
    base_dir = Path(tmp_path) / "comfy"
    for sub in ("output", "input", "temp", "user", "models"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    extra = base_dir / "extra_model_paths.yaml"
    # ComfyUI adds only the folders a section names (base_path alone adds none), as the launcher's
    # own extra_model_paths does: every model folder under base_dir/models, where tests put files.
    folders = {folder: folder for folder in CANONICAL}
    extra.write_text(json.dumps({"tests": {"base_path": str(base_dir / "models"), "is_default": True,
                                           "custom_nodes": str(CUSTOM_NODES), **folders}}))
    port = free_port()
    log_path = base_dir / "comfyui.log"
    argv = [real_python(), str(Path(REAL_DIR) / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--output-directory", str(base_dir / "output"), "--input-directory", str(base_dir / "input"),
            "--temp-directory", str(base_dir), "--user-directory", str(base_dir / "user"),
            "--extra-model-paths-config", str(extra), "--disable-auto-launch"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, cwd=REAL_DIR, stdout=log_file, stderr=subprocess.STDOUT)
    return wait_answering(StandinProcess(proc, port, base_dir, log_path), "ComfyUI", ready_timeout, 0.2)


def start_comfy(tmp_path: Path) -> StandinProcess:
    return start_real(tmp_path) if REAL_DIR else start_standin(tmp_path)


KIND = "real" if REAL_DIR else "standin"
