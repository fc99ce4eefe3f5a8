"""Where model files live, and the names of what a download leaves beside its target.

A model is `<root>/<canonical type>/<name>`. The root is `COMFY_CACHE_ROOT/models` for the
models of versions and `MODELS_DIR` for `/download` (by default the same folder), so a file
named by two versions, or by a version and a download, exists once. Beside a target a download
keeps two kinds of hidden files:

    .<name>.lock              the cross-process lock (locks.py)
    .<name>.<owner>.partial   the bytes so far, one file per downloading process: flock lies on
                              some network filesystems (huggingface_hub PR #4228), so two
                              processes must never write the same temporary file

Model names never start with a dot (`check_filename`), so these cannot collide with a model,
and ComfyUI skips them (not a model extension). Files that failed their checksum are moved to
`<root>/.quarantine/<type>/` for a person to inspect.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from services.errors import AppError
from services.model_types import canonical

# The same rule as versions/schema.json's model name (a test keeps them equal): an allowlist,
# so `/`, `\`, NUL, `..` as a name and hidden names are refused, while `a..b.safetensors` is fine.
# `$(?!\n)`: Python's `$` also matches before a final newline, so `m.safetensors\n` would pass.
FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+()-]*$(?!\n)")
MAX_NAME = 255
INDEX_NAME = ".index.json"
QUARANTINE = ".quarantine"
PARTIAL = ".partial"
LOCK = ".lock"


def cache_root(settings) -> Path:
    return settings.comfy_cache_root / "models"


def download_root(settings) -> Path:
    return settings.models_dir


def model_roots(settings) -> list[Path]:
    """Every root models may be in, the cache first (ComfyUI searches them in this order)."""
    roots: list[Path] = []
    for root in (cache_root(settings), download_root(settings)):
        if os.path.abspath(root) not in map(os.path.abspath, roots):
            roots.append(root)
    return roots


def index_path(settings) -> Path:
    return cache_root(settings) / INDEX_NAME


def check_type(model_type: object) -> str:
    folder = canonical(model_type) if isinstance(model_type, str) else None
    if folder is None:
        shown = (model_type[:64] or "none") if isinstance(model_type, str) else type(model_type).__name__
        raise AppError("invalid_model_type", "not a ComfyUI model folder", suffix=shown)
    return folder


def check_filename(name: object) -> str:
    if not isinstance(name, str) or len(name.encode()) > MAX_NAME or not FILENAME_RE.match(name):
        raise AppError("invalid_filename", "a model file name is 1 to 255 letters, digits and ' ._+()-', "
                       "starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Target:
    """One model file: `root/type/name`, with `type` canonical and `name` checked."""

    root: Path
    type: str
    name: str

    @classmethod
    def of(cls, root: Path, model_type: object, name: object) -> "Target":
        return cls(Path(root), check_type(model_type), check_filename(name))

    @property
    def folder(self) -> Path:
        return self.root / self.type

    @property
    def path(self) -> Path:
        return self.folder / self.name

    @property
    def lock_path(self) -> Path:
        return self.folder / f".{self.name}{LOCK}"

    def partial_path(self, owner: str) -> Path:
        return self.folder / f".{self.name}.{owner}{PARTIAL}"

    def partials(self) -> dict[Path, str]:
        """This target's partial files and their owners."""
        found = {}
        for path in self.folder.glob(f".{self.name}.*{PARTIAL}"):
            parsed = split_litter(path.name)
            # `.a.b.*.partial` also matches the partials of a target named `a.b.c`.
            if parsed and parsed[0] == self.name and parsed[2] == PARTIAL:
                found[path] = parsed[1]
        return found

    def quarantine_path(self, sha256: str) -> Path:
        return self.root / QUARANTINE / self.type / f"{self.name}.{sha256[:12]}"


def model_exists(target: Target) -> AppError:
    """A `/download` would replace another file at the target (services/models/intake.py)."""
    return AppError("model_exists", f"a different file is already at {target.type}/{target.name}; "
                    "send \"replace\": true to replace it", suffix=f"{target.type}/{target.name}")


def split_litter(filename: str) -> tuple[str, str, str] | None:
    """`.<name>.<owner><kind>` -> (name, owner, kind) for the files a process leaves behind.

    Owner tokens hold no dot (locks.owner_token), so the last dot-separated part is the owner.
    """
    for kind in (PARTIAL, ".stale"):
        if filename.startswith(".") and filename.endswith(kind):
            name, _, owner = filename[1:-len(kind)].rpartition(".")
            if name and owner:
                return name, owner, kind
    return None
