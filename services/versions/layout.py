"""Where an installed version lives: `<VERSIONS_ROOT>/<id>/`.

    <root>/<id>/ComfyUI/                    ComfyUI at the pinned commit
    <root>/<id>/ComfyUI/custom_nodes/<n>/   each custom node at its pinned commit
    <root>/<id>/venv/                       the version's virtualenv, layered over the base one
    <root>/<id>/requirements.txt            what pip was asked for (ComfyUI's, the nodes', the spec's)
    <root>/<id>/version.lock.json           what was installed; written last, so its presence
                                            inside <id>/ means the build finished
    <root>/.<id>.lock                       the installers' lock file (kept: deleting a lock file
                                            others may hold is how flock locks get lost)
    <root>/.work/<id>/                      builds in progress and replaced trees; whatever is
                                            here while one holds the lock belongs to a dead
                                            installer

Every name a version id makes is checked first (`check_version_id`), so no id can point
outside the root. Ids never start with a dot, so the dot entries cannot clash with them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.versions.spec import VERSION_ID_RE, check_version_id

LOCK_FILE = "version.lock.json"


@dataclass(frozen=True)
class Tree:
    """The inside of a version's folder; the same shape while it is built under `.work/`."""

    path: Path

    @property
    def comfy_dir(self) -> Path:
        return self.path / "ComfyUI"

    def node_dir(self, name: str) -> Path:
        return self.comfy_dir / "custom_nodes" / name

    @property
    def venv_dir(self) -> Path:
        return self.path / "venv"

    @property
    def python(self) -> Path:
        return self.venv_dir / "bin" / "python"

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    def read_lock(self) -> dict[str, Any] | None:
        """The lock file, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(self.lock_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Layout:
    root: Path
    version_id: str

    @classmethod
    def of(cls, root: Path, version_id: Any) -> "Layout":
        return cls(Path(root), check_version_id(version_id))

    @property
    def tree(self) -> Tree:
        return Tree(self.root / self.version_id)

    @property
    def installer_lock(self) -> Path:
        return self.root / f".{self.version_id}.lock"

    @property
    def work_dir(self) -> Path:
        return self.root / ".work" / self.version_id


def installed_ids(root: Path) -> list[str]:
    """Folders under the root named like versions (finished or not: see Tree.read_lock)."""
    if not Path(root).is_dir():
        return []
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and VERSION_ID_RE.match(p.name))
