"""Before supervisord starts: install the version ComfyUI would run when it is not installed.

`make run` from a fresh clone has no ComfyUI. Rather than start a `comfyui` program that can
only go FATAL, `python -m services.pod` installs that version (DEFAULT_VERSION_ID, `demo`
locally) in the foreground first, each step and pip's own lines logged as they happen, since
ComfyUI's requirements pull torch: gigabytes and minutes. Only locally or with
AUTO_INSTALL_VERSIONS=1: an image has its version baked in, and there this returns before it
reads anything. Models are not fetched here: `modelsync` keeps the active versions' models
present in the background while the API already answers.
"""
from __future__ import annotations

from services import logs
from services.comfy import backends
from services.comfy import runtime as runtime_file
from services.versions.install import install
from services.versions.layout import Layout

log = logs.get("pod.first_run")


def ensure_installed(settings) -> None:
    """Install each `comfyui` program's version if it is missing (on a multi-GPU Pod each backend
    restarts with the version it last switched to); AppError when that fails."""
    if settings.profile != "local" and not settings.auto_install_versions:
        return
    done: set[str] = set()
    for backend in backends.plan(settings):
        own = backend.settings(settings)
        spec = runtime_file.uninstalled(own, runtime_file.wanted(own))
        if spec is None or spec.id in done:
            continue
        done.add(spec.id)
        log.info("first_run_install", version_id=spec.id, program=backend.program,
                 path=str(Layout.of(settings.versions_root, spec.id).tree.path), comfyui=spec.comfyui.commit,
                 note="ComfyUI and its Python packages, once; with torch among them that is gigabytes and minutes")
        install(spec, settings, models=False)
