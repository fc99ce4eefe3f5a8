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
from services.comfy import runtime as runtime_file
from services.versions.install import install
from services.versions.layout import Layout

log = logs.get("pod.first_run")


def ensure_installed(settings) -> None:
    """Install the `comfyui` program's version if it is missing; AppError when that fails."""
    if settings.profile != "local" and not settings.auto_install_versions:
        return
    spec = runtime_file.uninstalled(settings, runtime_file.wanted(settings))
    if spec is None:
        return
    log.info("first_run_install", version_id=spec.id, path=str(Layout.of(settings.versions_root, spec.id).tree.path),
             comfyui=spec.comfyui.commit,
             note="ComfyUI and its Python packages, once; with torch among them that is gigabytes and minutes")
    install(spec, settings, models=False)
