"""Is this file the model it should be? Size first, then sha256, through the hash index.

An unchanged file is answered from the index with one stat(); a new or changed one is hashed
once with large reads (hashlib releases the GIL, so verify.py hashes several files at once).
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from services.models.index import HashIndex

READ_BYTES = 4 << 20
OnBytes = Callable[[int], None]  # bytes hashed so far


def hash_into(hasher, path: Path, on_bytes: OnBytes | None = None) -> int:
    """Feed the whole file to `hasher`; returns its length."""
    buf = bytearray(READ_BYTES)
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := f.readinto(buf):
            hasher.update(view[:n])
            done += n
            if on_bytes:
                on_bytes(done)
    return done


@dataclass(frozen=True)
class FileCheck:
    status: str  # verified | missing | size_mismatch | checksum_mismatch
    size: int | None = None
    sha256: str | None = None  # what the file holds, when known

    @property
    def ok(self) -> bool:
        return self.status == "verified"


def check_file(index: HashIndex, path: Path, *, size: int | None, sha256: str | None,
               on_bytes: OnBytes | None = None) -> FileCheck:
    """Without an expected sha256 a present file of the right size passes unhashed."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return FileCheck("missing")
    if not stat.S_ISREG(st.st_mode):
        return FileCheck("missing")
    if size is not None and st.st_size != size:
        return FileCheck("size_mismatch", st.st_size)
    known = index.lookup(path, st)
    if known is None and sha256 is not None:
        hasher = hashlib.sha256()
        hash_into(hasher, path, on_bytes)
        known = hasher.hexdigest()
        after = os.stat(path)
        # Only a file that did not change while it was read may be remembered.
        if (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns):
            index.record(path, st, known)
    if sha256 is not None and known != sha256:
        return FileCheck("checksum_mismatch", st.st_size, known)
    return FileCheck("verified", st.st_size, known)
