"""`versions install` and `versions remove`: a version's environment, built once, atomically.

A version is installed when `<root>/<id>/version.lock.json` exists and records the
fingerprint of the spec's install inputs (ComfyUI and node pins, requirements, base python).
Checking that costs one small file read, so re-installing an installed version is a no-op
in milliseconds; a changed spec makes the version `outdated` and the next install rebuilds it.

A build happens in `<root>/.work/<id>/build-<nonce>/` under the installers' lock and becomes
the version by rename; the lock file is written last. A crash, a failed fetch or a failed
pip install therefore never leaves a folder that looks installed, and whatever a dead
installer left under `.work/<id>/` is removed by the next holder of the lock.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from services import logs
from services.errors import AppError
from services.versions import git, proc, pyenv
from services.versions.layout import Layout, Tree
from services.versions.lock import installer_lock
from services.versions.models import check_models
from services.versions.spec import VersionSpec

log = logs.get("versions.install")

REQUIREMENTS_FILE = "requirements.txt"


@dataclass(frozen=True)
class InstallResult:
    version_id: str
    path: Path
    built: bool          # False: it was installed already and nothing was done
    waited: bool         # another installer held the lock first
    ms: float
    lock: dict[str, Any] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"version_id": self.version_id, "path": str(self.path), "built": self.built,
                "waited": self.waited, "ms": self.ms, "comfyui": self.lock["comfyui"]["commit"],
                "custom_nodes": {n["name"]: n["commit"] for n in self.lock["custom_nodes"]},
                "packages": self.lock["python"]["packages"]}


def fingerprint(spec: VersionSpec, settings) -> str:
    """Digest of everything an install depends on; description, args, models and workflow are not."""
    spec_dir = spec.path.parent
    inputs = {
        "comfyui": [git.source(spec.comfyui.repo, spec_dir), spec.comfyui.commit],
        "custom_nodes": [[n.name, git.source(n.repo, spec_dir), n.commit, n.requirements]
                         for n in spec.custom_nodes],
        "requirements": spec.python_requirements,
        "allow_base_overrides": sorted(pyenv.canonical(a) for a in spec.allow_base_overrides),
        "base_python": str(settings.versions_base_python),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def state(spec: VersionSpec, settings) -> str:
    """`installed` (matches the spec), `outdated` (installed from another spec) or `available`."""
    lock = Layout.of(settings.versions_root, spec.id).tree.read_lock()
    if lock is None:
        return "available"
    return "installed" if lock.get("fingerprint") == fingerprint(spec, settings) else "outdated"


def install(spec: VersionSpec, settings, *, models: bool = True) -> InstallResult:
    """Install the version unless it is installed; then fetch and verify its models through the
    model store (`models=False` skips them, e.g. an image that keeps weights on a volume)."""
    start = time.perf_counter()
    layout = Layout.of(settings.versions_root, spec.id)
    wanted = fingerprint(spec, settings)
    lock = _matching_lock(layout, wanted)
    built = waited = False
    if lock is None:
        try:
            with installer_lock(layout, settings.versions_lock_timeout) as waited:
                lock = _matching_lock(layout, wanted)
                if lock is None:
                    lock = _build_and_swap(spec, settings, layout, wanted)
                    built = True
        except OSError as exc:  # a full disk, a read-only volume: a code, not a traceback
            raise AppError("version_install_failed", f"{exc.strerror}: {exc.filename or layout.root}",
                           suffix=f"{spec.id}:filesystem") from None
    problems = check_models(spec, settings, fix=True) if models else []
    if problems:
        names = ", ".join(f"{p['model']} ({p['error'] or p['problem']})" for p in problems)
        raise AppError("version_install_failed", f"models could not be fetched and verified: {names}",
                       suffix=f"{spec.id}:models", extra={"models": problems})
    ms = round((time.perf_counter() - start) * 1000, 2)
    log.info("version_installed" if built else "version_already_installed", version_id=spec.id, ms=ms,
             waited=waited)
    return InstallResult(spec.id, layout.tree.path, built, waited, ms, lock)


def remove(version_id: str, settings) -> dict[str, Any]:
    layout = Layout.of(settings.versions_root, version_id)
    with installer_lock(layout, settings.versions_lock_timeout):
        if not layout.tree.path.exists():
            raise AppError("version_not_installed", f"{version_id} is not installed under {layout.root}",
                           suffix=version_id)
        _clear(layout.work_dir)
        _discard(layout.tree.path, layout.work_dir)
        layout.work_dir.rmdir()
    log.info("version_removed", version_id=version_id)
    return {"version_id": version_id, "removed": str(layout.tree.path)}


def _matching_lock(layout: Layout, wanted: str) -> dict[str, Any] | None:
    lock = layout.tree.read_lock()
    return lock if lock is not None and lock.get("fingerprint") == wanted else None


def _clear(work_dir: Path) -> None:
    if work_dir.exists():
        log.warning("version_stale_build_removed", path=str(work_dir),
                    entries=sorted(p.name for p in work_dir.iterdir()))
        shutil.rmtree(work_dir)


def _discard(path: Path, work_dir: Path) -> None:
    """Move a tree out of sight first (one rename), then delete it at leisure."""
    work_dir.mkdir(parents=True, exist_ok=True)
    doomed = work_dir / f"old-{uuid.uuid4().hex[:8]}"
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def _build_and_swap(spec: VersionSpec, settings, layout: Layout, wanted: str) -> dict[str, Any]:
    _clear(layout.work_dir)
    build = Tree(layout.work_dir / f"build-{uuid.uuid4().hex[:8]}")
    build.path.mkdir(parents=True)
    try:
        lock = _Builder(spec, settings, build).run(wanted)
        pyenv.relocate(build.venv_dir, build.path, layout.tree.path)
        if layout.tree.path.exists():
            _discard(layout.tree.path, layout.work_dir)
        os.rename(build.path, layout.tree.path)
        _fsync_dir(layout.root)
    finally:
        shutil.rmtree(layout.work_dir, ignore_errors=True)
    return lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Builder:
    """The steps of one build, each failure turned into `version_install_failed:<id>:<what>`."""

    def __init__(self, spec: VersionSpec, settings, tree: Tree):
        self.spec, self.settings, self.tree = spec, settings, tree
        self.spec_dir = spec.path.parent

    def _failed(self, what: str, detail: str) -> AppError:
        return AppError("version_install_failed", detail, suffix=f"{self.spec.id}:{what}")

    def _step(self, name: str, action: Callable[[], Any]) -> Any:
        # A line when a step starts as well as when it ends: a first install spends minutes in
        # one step (ComfyUI's requirements pull torch), and the user must see which one.
        log.info("version_install_step_start", version_id=self.spec.id, step=name)
        start = time.perf_counter()
        result = action()
        log.info("version_install_step", version_id=self.spec.id, step=name,
                 ms=round((time.perf_counter() - start) * 1000, 1))
        return result

    def run(self, digest: str) -> dict[str, Any]:
        spec = self.spec
        self._step("comfyui", lambda: self._checkout(spec.comfyui.repo, spec.comfyui.commit,
                                                     self.tree.comfy_dir, "comfyui_fetch", "comfyui_commit"))
        # ComfyUI exits at start-up without this folder, and git keeps no empty folders.
        (self.tree.comfy_dir / "custom_nodes").mkdir(exist_ok=True)
        for node in spec.custom_nodes:
            self._step(f"node:{node.name}", lambda n=node: self._checkout(
                n.repo, n.commit, self.tree.node_dir(n.name), f"node_fetch:{n.name}", f"node_commit:{n.name}"))
        base = self._step("venv", self._venv)
        requested = self._write_requirements()
        base_packages = base.packages()
        overrides = self._step("requirements", lambda: self._pip(base_packages)) if requested else []
        lock = {
            "id": spec.id,
            "fingerprint": digest,
            "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "comfyui": {"repo": proc.mask(spec.comfyui.repo), "commit": git.head(self.tree.comfy_dir)},
            "custom_nodes": [{"name": n.name, "repo": proc.mask(n.repo),
                              "commit": git.head(self.tree.node_dir(n.name))} for n in spec.custom_nodes],
            "python": {
                "base_python": str(base.python),
                "version": base.version,
                "base_site_dirs": list(base.site_dirs),
                "requested": requested,
                "packages": pyenv.packages([pyenv.site_packages(self.tree.venv_dir, base.version)]),
                "base_packages": base_packages,
                "base_overrides": [str(o) for o in overrides],
            },
        }
        self.tree.lock_file.write_text(json.dumps(lock, indent=2) + "\n", encoding="utf-8")
        return lock

    def _checkout(self, repo: str, commit: str, dest: Path, fetch_what: str, commit_what: str) -> None:
        url = git.source(repo, self.spec_dir)
        try:
            git.checkout(url, commit, dest)
        except git.NoSuchCommit as exc:
            raise self._failed(commit_what, str(exc)) from None
        except (git.FetchFailed, proc.ToolFailed) as exc:
            raise self._failed(fetch_what, f"cannot fetch {proc.mask(repo)}: {exc}") from None

    def _venv(self) -> pyenv.BaseEnv:
        python = self.settings.versions_base_python
        try:
            base = pyenv.BaseEnv.probe(python)
            pyenv.create(self.tree.venv_dir, base)
        except (proc.ToolFailed, ValueError, KeyError) as exc:
            raise self._failed("venv", f"cannot make a virtualenv over {python}: {exc}") from None
        return base

    def _write_requirements(self) -> list[str]:
        """One requirements file for the whole version, so pip resolves everything together."""
        lines = []
        comfy_reqs = self.tree.comfy_dir / REQUIREMENTS_FILE
        if comfy_reqs.is_file():
            lines.append(f"-r {comfy_reqs.relative_to(self.tree.path)}")
        for node in self.spec.custom_nodes:
            if node.requirements is not None:
                lines.extend(node.requirements)
            elif (self.tree.node_dir(node.name) / REQUIREMENTS_FILE).is_file():
                lines.append(f"-r {(self.tree.node_dir(node.name) / REQUIREMENTS_FILE).relative_to(self.tree.path)}")
        lines.extend(self.spec.python_requirements)
        if lines:
            (self.tree.path / REQUIREMENTS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return lines

    def _pip(self, base_packages: dict[str, str]) -> list[pyenv.Override]:
        reqs = self.tree.path / REQUIREMENTS_FILE
        pip_args = self.settings.versions_pip_args
        try:
            planned = pyenv.plan(self.tree.python, reqs, pip_args)
        except (proc.ToolFailed, ValueError, KeyError) as exc:
            raise self._failed("requirements", f"pip cannot resolve the requirements: {exc}") from None
        replaced = pyenv.overrides(planned, base_packages, ())
        blocked = pyenv.overrides(planned, base_packages, self.spec.allow_base_overrides)
        if blocked:
            raise AppError("version_base_override",
                           "the requirements would replace base packages: " + ", ".join(map(str, blocked))
                           + "; pin versions the base has, or list them in python.allow_base_overrides",
                           suffix=f"{self.spec.id}:{blocked[0].name}",
                           extra={"overrides": [str(o) for o in blocked]})
        if planned:
            try:
                pyenv.install(self.tree.python, reqs, pip_args,
                              lambda line: log.info("pip_output", version_id=self.spec.id, line=line))
            except proc.ToolFailed as exc:
                raise self._failed("requirements", f"pip install failed: {exc}") from None
        return replaced
