"""Small local worlds for the version tests: git repositories, wheels and specs, no network.

The "ComfyUI" repository's main.py execs the stand-in (`python -m tests.comfy_standin`) with
ComfyUI's own argv, under the interpreter that ran it: the installed version's virtualenv.
Wheels are zip files written by hand, so building them needs neither setuptools nor an index.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path
from typing import Any

from services.config import REPO_ROOT, Settings


MAIN_PY = f'''import os, sys
# A stand-in for ComfyUI's main.py: run the test stand-in with the same arguments.
os.environ["PYTHONPATH"] = {str(REPO_ROOT)!r} + os.pathsep + os.environ.get("PYTHONPATH", "")
os.execv(sys.executable, [sys.executable, "-u", "-m", "tests.comfy_standin", *sys.argv[1:]])
'''

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": "/dev/null"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=repo, check=True,
                          capture_output=True, text=True, env={**os.environ, **GIT_ENV}).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    """Write files into the repository (created if needed) and commit them; returns the commit id."""
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        git(repo, "init", "-q")
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_wheel(folder: Path, name: str, version: str, code: str = "") -> Path:
    """A pure-python wheel with one module `<name>` whose code is `code`."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n{code}",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def write_spec(versions_dir: Path, version_id: str, comfy: tuple[Path | str, str], *,
               nodes: list[dict[str, Any]] = (), requirements: list[str] = (),
               allow: list[str] = (), models: list[dict[str, Any]] = (), args: list[str] = ()) -> Path:
    versions_dir.mkdir(parents=True, exist_ok=True)
    repo, commit_id = comfy
    spec: dict[str, Any] = {"id": version_id, "comfyui": {"repo": str(repo), "commit": commit_id},
                            "custom_nodes": list(nodes), "models": list(models)}
    if args:
        spec["comfyui"]["args"] = list(args)
    if requirements or allow:
        spec["python"] = {"requirements": list(requirements), "allow_base_overrides": list(allow)}
    path = versions_dir / f"{version_id}.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def file_url(path: Path) -> str:
    return "file://" + str(path)


class World:
    """The repositories and wheels every version test shares (built once per session)."""

    def __init__(self, root: Path):
        self.root = root
        self.wheels = root / "wheels"
        make_wheel(self.wheels, "tinydep", "1.0")
        # Same name as a package of the base environment, at a version it does not have.
        make_wheel(self.wheels, "tqdm", "0.0.1", "BOGUS = True\n")
        self.comfy = root / "repos" / "ComfyUI"
        self.comfy_v1 = commit(self.comfy, {"main.py": MAIN_PY, "comfy/__init__.py": "",
                                            "custom_nodes/example_node.py.example": ""}, "v1")
        self.comfy_v2 = commit(self.comfy, {"comfy/version.py": "VERSION = 2\n"}, "v2")
        self.node = root / "repos" / "hello-node"
        self.node_v1 = commit(self.node, {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n",
                                          "requirements.txt": "tinydep==1.0\n"}, "node")
        self.greedy = root / "repos" / "greedy-node"
        self.greedy_v1 = commit(self.greedy, {"__init__.py": "NODE_CLASS_MAPPINGS = {}\n",
                                              "requirements.txt": "tqdm==0.0.1\n"}, "greedy")

    def settings(self, tmp: Path, **env: str) -> Settings:
        base = {"DATA_ROOT": str(tmp / "data"), "VERSIONS_DIR": str(tmp / "versions"),
                "VERSIONS_PIP_ARGS": f"--no-index --find-links {self.wheels}", "LOG_LEVEL": "warning"}
        return Settings.from_env({**base, **env})

    def env(self, tmp: Path, **extra: str) -> dict[str, str]:
        """The environment of an installer run as its own process with `settings(tmp)`."""
        return {**os.environ, "DATA_ROOT": str(tmp / "data"), "VERSIONS_DIR": str(tmp / "versions"),
                "VERSIONS_PIP_ARGS": f"--no-index --find-links {self.wheels}", **extra}
