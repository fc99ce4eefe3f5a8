"""One file from a source into a partial file: resumable, disk-checked, hashed as it streams.

The partial always holds a prefix of the file, written in order, so resuming needs no control
file (aria2 refuses to resume without its own, aria2#2204): its length is where to go on. The
prefix is read once to seed the hash; every later byte is hashed as it arrives, so there is no
second pass over the file. A source that ignores Range is read from byte 0 and the bytes
already held are skipped.

The free-disk check runs before the first byte is written: at once when the expected size is
known, else as soon as the source announces one.
"""
from __future__ import annotations

import errno
import hashlib
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from services.errors import AppError
from services.models import segments
from services.models.integrity import hash_into
from services.models.retry import Backoff
from services.models.segments import Batch
from services.models.sources import Body, RangeNotSatisfiable, Transient

if TYPE_CHECKING:  # the transports load on the first download (sources.open_source)
    from services.models.transport import GcsSource, HttpSource

CHUNK = 1 << 20
REPORT_EVERY = 0.2
_IOV_MAX = os.sysconf("SC_IOV_MAX")
Progress = Callable[[int, "int | None"], bool]  # (bytes done, total) -> keep going?


class Stopped(Exception):
    """Asked to stop (SIGTERM, or the queue row is gone); the partial stays for a later resume."""


@dataclass(frozen=True)
class Options:
    segments: int
    segment_min: int
    piece: int
    retries: int
    base_sleep: float

    @classmethod
    def from_settings(cls, settings) -> "Options":
        return cls(settings.download_segments, settings.download_segment_min_bytes,
                   settings.download_piece_bytes, settings.download_retries, settings.download_retry_base_sleep)


class Ticker:
    """Progress reports at most every REPORT_EVERY seconds, and sleeps that keep reporting."""

    def __init__(self, on_progress: Progress, stop: threading.Event):
        self.on_progress = on_progress
        self.stop = stop
        self.done = 0
        self.total: int | None = None
        self._last = 0.0

    def report(self, done: int | None = None, force: bool = False) -> None:
        if done is not None:
            self.done = done
        if self.stop.is_set():
            raise Stopped()
        now = time.monotonic()
        if force or now - self._last >= REPORT_EVERY:
            self._last = now
            if not self.on_progress(self.done, self.total):
                raise Stopped()

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.stop.wait(min(left, REPORT_EVERY))
            self.report()


def check_disk(folder: Path, needed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise AppError("insufficient_disk", f"needs {needed} bytes, {free} free in {folder}",
                       extra={"needed": needed, "free": free})


def download(source: "HttpSource | GcsSource", partial: Path, *, size: int | None, options: Options,
             on_progress: Progress, stop: threading.Event) -> tuple[int, str]:
    """Fill `partial` with the whole file; returns (size, sha256) once it is fsynced."""
    ticker = Ticker(on_progress, stop)
    ticker.total = size
    hasher, done = _hash_prefix(partial, size)
    if size is not None:
        check_disk(partial.parent, size - done)
        if done == size:  # killed after the last byte, before the rename
            return done, hasher.hexdigest()
    backoff = Backoff(options.retries, options.base_sleep, ticker.sleep, source.public)
    try:
        body = backoff.call(lambda: source.open(done))
    except RangeNotSatisfiable:
        os.unlink(partial)
        hasher, done = hashlib.sha256(), 0
        body = backoff.call(lambda: source.open(0))
    total = _expected_total(body, size, source.public)
    ticker.total = total
    if size is None and total is not None:
        check_disk(partial.parent, total - done)
    if body.ranged and total is not None and options.segments > 1 and total - done >= options.segment_min:
        body.close()
        batches = segments.in_order(source, done, total, options, tick=ticker.report, stop=stop)
    else:
        batches = _stream(source, body, done, total, backoff)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
    os.lseek(fd, done, os.SEEK_SET)
    writer = _Writer(fd)
    try:
        for batch in batches:
            if total is not None and done + batch.size > total:
                raise AppError("size_mismatch", f"{source.public} sent more than {total} bytes")
            for chunk in batch.chunks:
                hasher.update(chunk)
            writer.put(batch)
            done += batch.size
            ticker.report(done)
        if total is not None and done != total:
            raise AppError("size_mismatch", f"{source.public} ended after {done} of {total} bytes")
        writer.close()
        if writer.error is not None:
            raise writer.error
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        # A full volume breaks everything else on it (the state database first): give it back.
        os.unlink(partial)
        free = shutil.disk_usage(partial.parent).free
        raise AppError("insufficient_disk", f"the disk filled up near byte {done}; {free} bytes free",
                       extra={"needed": (total or done) - done, "free": free}) from None
    finally:
        batches.close()
        writer.close()  # what was hashed is written even when stopping: the partial stays a prefix
        os.close(fd)
    ticker.report(done, force=True)
    return done, hasher.hexdigest()


class _Writer:
    """Writes batches in file order on its own thread, so writing overlaps hashing (both
    release the GIL). Its queue holds one batch, which bounds memory."""

    def __init__(self, fd: int):
        self._fd = fd
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self.error: OSError | None = None  # the first failed write; later batches are dropped
        self._thread = threading.Thread(target=self._run, name="partial-writer", daemon=True)
        self._thread.start()

    def put(self, batch: Batch) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(batch)

    def close(self) -> None:
        """Wait until every queued batch is written (or dropped after an error)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self.error is None:
                try:
                    _write_all(self._fd, batch.chunks)
                except OSError as exc:
                    self.error = exc
            if batch.written is not None:
                batch.written()


def _hash_prefix(partial: Path, size: int | None):
    hasher = hashlib.sha256()
    try:
        held = os.stat(partial).st_size
    except FileNotFoundError:
        return hasher, 0
    if size is not None and held > size:
        os.unlink(partial)  # longer than the file: not a prefix of it
        return hasher, 0
    return hasher, hash_into(hasher, partial)


def _expected_total(body: Body, size: int | None, public: str) -> int | None:
    if size is not None and body.total is not None and body.total != size:
        body.close()
        raise AppError("size_mismatch", f"{public} announces {body.total} bytes, {size} expected")
    return size if size is not None else body.total


def _stream(source, body: Body, position: int, total: int | None, backoff: Backoff) -> Iterator[Batch]:
    """The bytes from `position` on, over one connection at a time, reopened after a failure."""
    while True:
        skip = position - body.start
        batch = Batch([], 0)
        try:
            while True:
                data = body.read(CHUNK)
                if not data:
                    if total is None or position >= total:
                        if batch.size:
                            yield batch
                        return
                    raise Transient("unreachable")  # the connection closed early
                backoff.progressed()
                if skip >= len(data):
                    skip -= len(data)
                    continue
                if skip:
                    data, skip = data[skip:], 0
                position += len(data)
                batch.add(data)
                if batch.size >= CHUNK:
                    yield batch
                    batch = Batch([], 0)
        except Transient as exc:
            if batch.size:
                yield batch  # what arrived before the failure is good
            backoff.failed(exc)
        finally:
            body.close()
        body = backoff.call(lambda: source.open(position))


def _write_all(fd: int, chunks: list) -> None:
    views = [memoryview(c) for c in chunks]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:first + _IOV_MAX])
        while written:
            if written >= len(views[first]):
                written -= len(views[first])
                first += 1
            else:
                views[first] = views[first][written:]
                written = 0
