"""The hash index: `(path, size, mtime_ns, inode) -> sha256`, so unchanged files are not re-read.

Hashing 30 GB of models takes minutes; a stat() takes microseconds. An entry counts only while
all four keys still match the file, so a replaced or rewritten file is hashed again.

The index is one JSON file beside the type folders, replaced atomically (a reader sees the old
or the new file, never half of one). It is a cache, not a record: a lost update between two
processes, or a file torn by a power cut, only costs one more hash, which is why it is neither
locked nor fsynced. Each write re-reads the file first so that updates of other processes are
kept in the common case.
"""
from __future__ import annotations

import json
import os
import secrets
import threading
from pathlib import Path


class HashIndex:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[str, list] = {}
        self._stamp: tuple | None = None

    @staticmethod
    def _key(path: Path) -> str:
        return os.path.abspath(path)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            files = json.loads(self.path.read_text()).get("files", {})
        except (OSError, ValueError, AttributeError):
            files = {}  # unreadable: start again, every file is simply hashed once more
        self._entries = {k: v for k, v in files.items() if isinstance(v, list) and len(v) == 4}
        self._stamp = stamp

    def lookup(self, path: Path, st: os.stat_result) -> str | None:
        """The file's sha256 if it was hashed and has not changed since."""
        with self._lock:
            self._refresh()
            entry = self._entries.get(self._key(path))
        if entry and entry[:3] == [st.st_size, st.st_mtime_ns, st.st_ino]:
            return entry[3]
        return None

    def find(self, sha256: str) -> list[Path]:
        """Files recorded with this hash (callers re-check them with `lookup`)."""
        with self._lock:
            self._refresh()
            return [Path(k) for k, v in self._entries.items() if v[3] == sha256]

    def record(self, path: Path, st: os.stat_result, sha256: str) -> None:
        with self._lock:
            self._refresh()
            self._entries[self._key(path)] = [st.st_size, st.st_mtime_ns, st.st_ino, sha256]
            self._entries = {k: v for k, v in self._entries.items() if os.path.exists(k)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_text(json.dumps({"version": 1, "files": self._entries}, separators=(",", ":")))
            os.replace(tmp, self.path)
            self._stamp = None
