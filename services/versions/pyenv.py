"""A version's Python environment: a virtualenv layered over the image's base environment.

torch and the other heavy packages are installed once, in the base environment
(`VERSIONS_BASE_PYTHON`). Each version gets a small virtualenv that sees them and adds only
what its ComfyUI and custom nodes need beyond them, so two versions may pin different
packages without a second copy of torch.

`--system-site-packages` is not enough for that: a virtualenv made by a python that itself
runs in a virtualenv sees the *interpreter's* site-packages, not its parent virtualenv's. A
`.pth` file in the new virtualenv adds the base environment's site directories instead, after
its own (so the version's packages win) and through `site.addsitedir` (so the base
environment's own .pth files still apply). pip comes from the base environment the same way.

Before anything is installed, pip's `--dry-run --report` says what it would install; a
package that the base environment already has at another version would shadow it, which is
how a custom node silently swaps torch for an incompatible build. That is refused unless the
spec lists the package in `python.allow_base_overrides`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Sequence

from services.versions import proc

PTH_NAME = "_appliance_base.pth"
_PROBE = ("import json, site, sys; print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
          "'site': site.getsitepackages()}))")
_PIP = ("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--no-warn-script-location")


def canonical(name: str) -> str:
    """PEP 503 name: `Foo_Bar.baz` and `foo-bar-baz` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def packages(site_dirs: Iterable[str | Path]) -> dict[str, str]:
    """Canonical name -> version of every distribution installed in these folders."""
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=[str(d) for d in site_dirs]):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class BaseEnv:
    python: Path
    version: str                 # "3.11": names the virtualenv's site-packages folder
    site_dirs: tuple[str, ...]

    @classmethod
    def probe(cls, python: Path) -> "BaseEnv":
        info = json.loads(proc.run([python, "-c", _PROBE]))
        return cls(Path(python), info["version"], tuple(info["site"]))

    def packages(self) -> dict[str, str]:
        return packages(self.site_dirs)


@dataclass(frozen=True)
class Override:
    name: str
    base_version: str
    new_version: str

    def __str__(self) -> str:
        return f"{self.name} {self.base_version} -> {self.new_version}"


def site_packages(venv_dir: Path, python_version: str) -> Path:
    return venv_dir / "lib" / f"python{python_version}" / "site-packages"


def create(venv_dir: Path, base: BaseEnv) -> None:
    proc.run([base.python, "-m", "venv", "--without-pip", venv_dir])
    lines = [f"import site; site.addsitedir({d!r})" for d in base.site_dirs]
    (site_packages(venv_dir, base.version) / PTH_NAME).write_text("\n".join(lines) + "\n")


def plan(python: Path, requirements_file: Path, pip_args: Sequence[str]) -> list[tuple[str, str]]:
    """(name, version) of each distribution pip would install for the requirements."""
    out = proc.run([python, *_PIP, "--dry-run", "--quiet", "--report", "-", "-r", requirements_file, *pip_args])
    report = json.loads(out)
    return [(item["metadata"]["name"], item["metadata"]["version"]) for item in report.get("install", [])]


def overrides(planned: Iterable[tuple[str, str]], base_packages: dict[str, str],
              allowed: Iterable[str]) -> list[Override]:
    permitted = {canonical(a) for a in allowed}
    return [Override(name, base_packages[canonical(name)], version) for name, version in planned
            if canonical(name) in base_packages and canonical(name) not in permitted]


def install(python: Path, requirements_file: Path, pip_args: Sequence[str], on_line: Callable[[str], None]) -> None:
    """pip's own lines go to `on_line` as they come (without its progress bar, whose redrawn line
    makes no sense in a log): a first install downloads gigabytes and takes minutes."""
    proc.stream([python, *_PIP, "--progress-bar", "off", "-r", requirements_file, *pip_args], on_line)


def relocate(venv_dir: Path, old: Path, new: Path) -> None:
    """Point the scripts pip wrote (their #! lines) at the folder the tree is renamed to."""
    before, after = str(old).encode(), str(new).encode()
    candidates = [venv_dir / "pyvenv.cfg", *(venv_dir / "bin").iterdir()]
    for path in candidates:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        data = path.read_bytes()
        if before in data:
            path.write_bytes(data.replace(before, after))
