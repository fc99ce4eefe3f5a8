"""Writing a small file so that readers see the old content or the new, never half of it.

The Pod's programs hand each other state through small files (gpuwatch's snapshot, the wanted
ComfyUI runtime, ComfyUI's start failure, extra_model_paths, the secrets file): a reader in
another process may open one at any moment. The text goes to a hidden file of this process
first and is renamed over the target (atomic on one filesystem).
"""
from __future__ import annotations

import os
from pathlib import Path


def write_text(path: Path, text: str, mode: int = 0o666) -> None:
    """Replace `path` with `text`; a new file gets `mode` (less the umask) from its creation on,
    so a 0600 file is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # O_EXCL below: a file left by someone else never keeps its mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)
