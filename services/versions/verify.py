"""`versions verify`: does an installed version still match its spec and its lock file?

Checks what can drift after an install: the spec (edited since), each checkout (another
commit, edited tracked files), the version's own packages and the base environment's (a pip
run by hand, a rebuilt image), and the models. Every finding is one problem entry; an empty
list means the version is what its lock file says.
"""
from __future__ import annotations

from typing import Any

from services.errors import AppError
from services.versions import git, pyenv
from services.versions.install import fingerprint
from services.versions.layout import Layout
from services.versions.models import check_models
from services.versions.spec import VersionSpec


def verify(spec: VersionSpec, settings) -> dict[str, Any]:
    tree = Layout.of(settings.versions_root, spec.id).tree
    lock = tree.read_lock()
    if lock is None:
        raise AppError("version_not_installed", f"{spec.id} is not installed under {settings.versions_root}",
                       suffix=spec.id)
    problems: list[dict[str, Any]] = []
    if lock.get("fingerprint") != fingerprint(spec, settings):
        problems.append({"part": "spec", "problem": "outdated",
                         "detail": "the spec changed since the install; run versions install again"})
    problems += _checkout("comfyui", tree.comfy_dir, lock["comfyui"]["commit"])
    for node in lock["custom_nodes"]:
        problems += _checkout(f"node:{node['name']}", tree.node_dir(node["name"]), node["commit"])
    python = lock["python"]
    site = pyenv.site_packages(tree.venv_dir, python["version"])
    problems += _packages("packages", python["packages"], pyenv.packages([site]), extra_counts=True)
    problems += _packages("base_packages", python["base_packages"], pyenv.packages(python["base_site_dirs"]),
                          extra_counts=False)
    problems += [{"part": "models", **p} for p in check_models(spec, settings)]
    return {"version_id": spec.id, "ok": not problems, "problems": problems}


def _checkout(part: str, path, commit: str) -> list[dict[str, Any]]:
    if not path.is_dir():
        return [{"part": part, "problem": "missing", "path": str(path)}]
    found = git.head(path)
    if found != commit:
        return [{"part": part, "problem": "commit", "expected": commit, "found": found}]
    changed = git.modified(path)
    return [{"part": part, "problem": "modified", "files": changed}] if changed else []


def _packages(part: str, recorded: dict[str, str], found: dict[str, str], *, extra_counts: bool) -> list[dict[str, Any]]:
    # Packages added to the base environment are not a drift of this version; added to its own
    # virtualenv they are (someone ran pip in it by hand).
    problems = []
    for name, version in recorded.items():
        if name not in found:
            problems.append({"part": part, "problem": "missing", "package": name, "expected": version})
        elif found[name] != version:
            problems.append({"part": part, "problem": "version", "package": name,
                             "expected": version, "found": found[name]})
    if extra_counts:
        problems += [{"part": part, "problem": "extra", "package": name, "found": found[name]}
                     for name in sorted(set(found) - set(recorded))]
    return problems
