"""Which ComfyUI runs: the runtime of a version, the one Pod mode's `comfyui` program should
run, and the one admission check that a versioned runtime is installed.

`resolve` decides what to run for a version. With `COMFY_HOME` set in the environment the
appliance runs that checkout with `COMFY_PYTHON` for every version (developer mode: nothing
is installed or switched, and results say `comfy_home:<path>` as the version in use).
Otherwise it runs the installed version: `<VERSIONS_ROOT>/<id>/ComfyUI` under the version's
own virtualenv, with the spec's ComfyUI arguments.

Pod mode's `comfyui` program runs the runtime a switch asked for (the wanted-runtime file in
RUN_DIR), else the default one: the COMFY_HOME checkout when the user set COMFY_HOME, else
DEFAULT_VERSION_ID's version, else the COMFY_HOME default path. The default version is the
runtime even while it is not installed: the program then fails with
`version_not_installed:<id>` (and `python -m services.pod` installs it first where it may),
rather than quietly running whatever sits at the COMFY_HOME default path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from services import atomic_file
from services.errors import AppError
from services.versions.install import state
from services.versions.layout import Layout
from services.versions.spec import SpecStore, VersionSpec

FILENAME = "comfy-runtime.json"


@dataclass(frozen=True)
class Runtime:
    """What to run: equal runtimes need no restart."""
    label: str                 # the version in use, as jobs and /healthz report it
    comfy_home: Path
    python: Path
    args: tuple[str, ...]
    versioned: bool            # False in developer mode: nothing to install


def checkout_runtime(settings) -> Runtime:
    """COMFY_HOME run by COMFY_PYTHON, whatever the version (developer mode)."""
    return Runtime(f"comfy_home:{settings.comfy_home}", settings.comfy_home, settings.comfy_python, (), False)


def resolve(spec: VersionSpec, settings) -> Runtime:
    if settings.is_set("comfy_home"):
        return checkout_runtime(settings)
    tree = Layout.of(settings.versions_root, spec.id).tree
    return Runtime(spec.id, tree.comfy_dir, tree.python, spec.comfy_args, True)


# ---- the one install gate ---------------------------------------------------------------
def installed(spec: VersionSpec, runtime: Runtime, settings) -> bool:
    """A developer-mode runtime needs nothing; a version needs an install of this very spec."""
    return not runtime.versioned or state(spec, settings) == "installed"


def not_installed(spec: VersionSpec, settings) -> AppError:
    return AppError("version_not_installed", f"version {spec.id} is not installed under {settings.versions_root} "
                    f"(or its spec changed since); run `python -m services versions install {spec.id}` or set "
                    "AUTO_INSTALL_VERSIONS=1", suffix=spec.id)


# ---- Pod mode: the runtime the `comfyui` program runs -------------------------------------
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
    return None if installed(spec, runtime, settings) else spec


def check_installed(settings, runtime: Runtime) -> None:
    spec = uninstalled(settings, runtime)
    if spec is not None:
        raise not_installed(spec, settings)
