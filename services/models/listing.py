"""What `GET /models/ls` shows: the model files ComfyUI can see, by canonical type.

Both roots are listed (the cache first, as ComfyUI searches them), with the legacy folders
(`unet`, `clip`, ...) under the type they now belong to. A name found twice is shown once, the
copy ComfyUI would load. Hidden files (locks, partial downloads) are not models. The sha256
comes from the hash index when the file has been verified and not changed since; listing never
reads a model's bytes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from services.model_types import ALIASES, CANONICAL
from services.models.cache import check_type, index_path, model_roots
from services.models.index import HashIndex


def list_models(settings, type: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """{type: [{name, size, sha256, path}]} for one type (aliases accepted) or all of them."""
    types = [check_type(type)] if type is not None else list(CANONICAL)
    index = HashIndex(index_path(settings))
    return {folder: _list_type(index, model_roots(settings), folder) for folder in types}


def _list_type(index: HashIndex, roots: list[Path], folder: str) -> list[dict[str, Any]]:
    folders = [folder, *(alias for alias, canon in ALIASES.items() if canon == folder)]
    entries: dict[str, dict[str, Any]] = {}
    for root in roots:
        for name in folders:
            base = Path(root) / name
            for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in sorted(filenames):
                    path = Path(dirpath) / filename
                    shown = path.relative_to(base).as_posix()
                    if filename.startswith(".") or shown in entries:
                        continue
                    try:
                        st = path.stat()
                    except OSError:
                        continue  # a dangling link
                    entries[shown] = {"name": shown, "size": st.st_size, "sha256": index.lookup(path, st),
                                      "path": str(path)}
    return sorted(entries.values(), key=lambda entry: entry["name"])
