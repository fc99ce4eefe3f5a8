"""Which ComfyUI the Pod's `comfyui` program runs: the runtime a switch asked for, else the
default one (developer mode with COMFY_HOME, else DEFAULT_VERSION_ID when it is installed,
else the COMFY_HOME default path, which fails with `comfy_init_failed:no_comfy_home` when
there is no ComfyUI there)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from services.errors import AppError
from services.versions.install import state
from services.versions.spec import SpecStore
from services.versions.switch import Runtime, checkout_runtime, resolve

FILENAME = "comfy-runtime.json"


def write_wanted(run_dir: Path, runtime: Runtime) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{FILENAME}.{os.getpid()}"
    tmp.write_text(json.dumps({"label": runtime.label, "comfy_home": str(runtime.comfy_home),
                               "python": str(runtime.python), "args": list(runtime.args),
                               "versioned": runtime.versioned}))
    os.replace(tmp, run_dir / FILENAME)


def wanted(settings) -> Runtime:
    try:
        data = json.loads((settings.run_dir / FILENAME).read_text())
        return Runtime(data["label"], Path(data["comfy_home"]), Path(data["python"]), tuple(data["args"]),
                       data["versioned"])
    except (OSError, ValueError, KeyError):
        return default(settings)


def default(settings) -> Runtime:
    if not settings.is_set("comfy_home") and settings.default_version_id:
        try:
            spec = SpecStore(settings.versions_dir).load(settings.default_version_id)
            if state(spec, settings) == "installed":
                return resolve(spec, settings)
        except AppError:
            pass
    return checkout_runtime(settings)
