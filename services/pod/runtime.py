"""Which ComfyUI the Pod's `comfyui` program runs: the runtime a switch asked for, else the
default one: the COMFY_HOME checkout when the user set COMFY_HOME (developer mode), else
DEFAULT_VERSION_ID's version, else the COMFY_HOME default path.

The default version is the runtime even while it is not installed: the `comfyui` program then
fails with `version_not_installed:<id>` (and `python -m services.pod` installs it first where it
may), rather than quietly running whatever sits at the COMFY_HOME default path.
"""
from __future__ import annotations

import json
from pathlib import Path

from services import atomic_file
from services.errors import AppError
from services.versions.install import state
from services.versions.spec import SpecStore, VersionSpec
from services.versions.switch import Runtime, checkout_runtime, resolve

FILENAME = "comfy-runtime.json"


def write_wanted(run_dir: Path, runtime: Runtime) -> None:
    atomic_file.write_text(run_dir / FILENAME, json.dumps({
        "label": runtime.label, "comfy_home": str(runtime.comfy_home), "python": str(runtime.python),
        "args": list(runtime.args), "versioned": runtime.versioned}))


def wanted(settings) -> Runtime:
    """Raises AppError when DEFAULT_VERSION_ID names no valid spec."""
    try:
        data = json.loads((settings.run_dir / FILENAME).read_text())
        return Runtime(data["label"], Path(data["comfy_home"]), Path(data["python"]), tuple(data["args"]),
                       data["versioned"])
    except (OSError, ValueError, KeyError):
        return default(settings)


def default(settings) -> Runtime:
    if settings.is_set("comfy_home") or not settings.default_version_id:
        return checkout_runtime(settings)
    return resolve(SpecStore(settings.versions_dir).load(settings.default_version_id), settings)


def uninstalled(settings, runtime: Runtime) -> VersionSpec | None:
    """The spec of `runtime` when it is a version that is not installed (or was installed from an
    older spec, which an install replaces); None when there is nothing to install."""
    if not runtime.versioned:
        return None
    spec = SpecStore(settings.versions_dir).load(runtime.label)
    return None if state(spec, settings) == "installed" else spec


def check_installed(settings, runtime: Runtime) -> None:
    spec = uninstalled(settings, runtime)
    if spec is not None:
        raise AppError("version_not_installed", f"version {spec.id} is not installed under {settings.versions_root} "
                       f"(or its spec changed since); run `python -m services versions install {spec.id}`",
                       suffix=spec.id)
