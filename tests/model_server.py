"""A model file served by the real 127.0.0.1 server of tests/http_server.py, with faults on cue.

`Blob(data, faults=[...])` is a route handler. Each request takes the next fault from the list
(`None` serves that request normally, and so are all once the list is used up): `Drop(n)` sends n body bytes and closes the connection,
`Stall(n, s)` sends n bytes and then goes silent for s seconds, `Status(code)` answers that
status (429/503 with Retry-After). Blob-wide: `ranges=False` ignores Range (always 200 with the
whole body), `corrupt=True` serves the same size with one byte changed, `rate` throttles an
in-memory blob to bytes per second, `length=False` sends no Content-Length (the size is unknown
until the connection closes). A file on disk is served with sendfile, so the benchmark's
server is not the bottleneck. `requests` records each request's Range and Authorization headers.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.http_server import send

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Drop:
    after: int


@dataclass(frozen=True)
class Stall:
    after: int
    seconds: float = 30.0


@dataclass(frozen=True)
class Status:
    code: int
    retry_after: str | None = None


class Blob:
    def __init__(self, data: bytes | Path, *, faults=(), ranges: bool = True, corrupt: bool = False,
                 rate: int | None = None, length: bool = True):
        self.path = data if isinstance(data, Path) else None
        self.data = b"" if self.path else data
        if corrupt:
            mid = len(self.data) // 2
            self.data = self.data[:mid] + bytes([self.data[mid] ^ 0xFF]) + self.data[mid + 1:]
        self.size = self.path.stat().st_size if self.path else len(self.data)
        self.faults = list(faults)
        self.ranges = ranges
        self.rate = rate
        self.length = length
        self.requests: list[dict] = []
        self.sent = 0
        self._lock = threading.Lock()

    def __call__(self, req) -> None:
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
            self.requests.append({"range": req.headers.get("Range"), "auth": req.headers.get("Authorization"),
                                  "method": req.command})
        if isinstance(fault, Status):
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            send(req, fault.code, b"try later", "text/plain", headers)
            return
        start, end, status = 0, self.size, 200
        match = _RANGE.match(req.headers.get("Range", "")) if self.ranges else None
        if match:
            start = int(match[1])
            end = min(int(match[2]) + 1, self.size) if match[2] else self.size
            if start >= self.size:
                send(req, 416, b"", headers={"Content-Range": f"bytes */{self.size}"})
                return
            status = 206
        req.send_response(status)
        req.send_header("Content-Type", "application/octet-stream")
        if self.length:
            req.send_header("Content-Length", str(end - start))
        else:
            req.close_connection = True  # the end of the body is the end of the connection
        if self.ranges:
            req.send_header("Accept-Ranges", "bytes")
        if status == 206:
            req.send_header("Content-Range", f"bytes {start}-{end - 1}/{self.size}")
        req.end_headers()
        if req.command == "HEAD":
            return
        limit = end - start
        if isinstance(fault, (Drop, Stall)):
            limit = min(limit, fault.after)
        try:
            self._body(req, start, limit)
            if isinstance(fault, Stall):
                time.sleep(fault.seconds)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if isinstance(fault, (Drop, Stall)):
            req.close_connection = True

    def _body(self, req, start: int, limit: int) -> None:
        if self.path:
            req.wfile.flush()
            with open(self.path, "rb") as f:
                offset, left = start, limit
                while left:
                    n = os.sendfile(req.connection.fileno(), f.fileno(), offset, min(left, 1 << 24))
                    if n == 0:
                        break
                    offset, left = offset + n, left - n
                    self._count(n)
            return
        view = memoryview(self.data)
        for at in range(start, start + limit, _CHUNK):
            chunk = view[at:min(at + _CHUNK, start + limit)]
            req.wfile.write(chunk)
            self._count(len(chunk))
            if self.rate:
                time.sleep(len(chunk) / self.rate)

    def _count(self, n: int) -> None:
        with self._lock:
            self.sent += n
