"""Parallel ranged requests for one big file, handed back in file order.

SHA-256 can only be computed in order, and hashing the file again afterwards would read a
14 GB model twice. So the rest of the file is cut into pieces of `DOWNLOAD_PIECE_BYTES`;
`DOWNLOAD_SEGMENTS` threads fetch the next pieces while the caller hashes and writes them in
order. A piece waits in memory for its turn, and at most segments + 2 pieces exist at once
(fetched, waiting, or not yet written): that bounds memory, and the partial file stays a plain
prefix, resumable without a control file.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from services.errors import AppError
from services.models.retry import Backoff
from services.models.sources import Transient

READ_BYTES = 256 << 10


@dataclass
class Batch:
    """Consecutive bytes as the chunks they arrived in; `written` runs once they are on disk."""

    chunks: list
    size: int
    written: Callable[[], None] | None = None

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)


class _Closed(Exception):
    pass


class _Pieces:
    def __init__(self, source, start: int, end: int, options):
        self.source = source
        self.end = end
        self.piece = options.piece
        self.starts = range(start, end, options.piece)
        self.options = options
        self.cond = threading.Condition()
        # A slot is a piece in memory: being fetched, waiting, hashed or queued for writing.
        # The writer frees it (Batch.written) once the piece is on disk.
        self.slots = threading.Semaphore(options.segments + 2)
        self.ready: dict[int, Batch] = {}
        # Each slot's buffer is allocated once and reused: chunks allocated per read and freed
        # by another thread made the allocator keep twice the memory (one arena per thread).
        self.buffers: list[bytearray] = []
        self.next = 0
        self.error: BaseException | None = None
        self.closed = threading.Event()

    def work(self) -> None:
        backoff = Backoff(self.options.retries, self.options.base_sleep, self._sleep, self.source.public)
        try:
            while True:
                while not self.slots.acquire(timeout=0.2):
                    if self.closed.is_set():
                        return
                with self.cond:
                    if self.closed.is_set() or self.next >= len(self.starts):
                        self.slots.release()
                        return
                    index, self.next = self.next, self.next + 1
                    buf = self.buffers.pop() if self.buffers else bytearray(self.piece)
                batch = self._fetch(self.starts[index], buf, backoff)
                with self.cond:
                    self.ready[index] = batch
                    self.cond.notify_all()
        except _Closed:
            return
        except BaseException as exc:  # handed to the consumer, which raises it
            with self.cond:
                self.error = self.error or exc
                self.cond.notify_all()

    def _sleep(self, seconds: float) -> None:
        if self.closed.wait(seconds):
            raise _Closed()

    def _fetch(self, start: int, buf: bytearray, backoff: Backoff) -> Batch:
        length = min(self.piece, self.end - start)
        got = 0
        while got < length:
            at = start + got
            body = backoff.call(lambda: self.source.open(at, start + length))
            try:
                if body.start != at:
                    raise AppError("download_failed", f"{self.source.public} stopped honouring Range",
                                   suffix="range_ignored")
                while got < length:
                    if self.closed.is_set():
                        raise _Closed()
                    data = body.read(min(READ_BYTES, length - got))
                    if not data:
                        raise Transient("unreachable")
                    buf[got:got + len(data)] = data
                    got += len(data)
                    backoff.progressed()
            except Transient as exc:
                backoff.failed(exc)
            finally:
                body.close()
        return Batch([memoryview(buf)[:length]], length, written=lambda: self._recycle(buf))

    def _recycle(self, buf: bytearray) -> None:
        with self.cond:
            self.buffers.append(buf)
        self.slots.release()


def in_order(source, start: int, end: int, options, *, tick: Callable[[], None],
             stop: threading.Event) -> Iterator[Batch]:
    """Bytes `start`..`end` of the source, in order. `tick` runs while waiting (progress)."""
    pieces = _Pieces(source, start, end, options)
    workers = [threading.Thread(target=pieces.work, name=f"segment-{i}", daemon=True)
               for i in range(min(options.segments, len(pieces.starts)))]
    for worker in workers:
        worker.start()
    try:
        for index in range(len(pieces.starts)):
            with pieces.cond:
                while index not in pieces.ready and pieces.error is None and not stop.is_set():
                    pieces.cond.wait(0.2)
                    tick()
                if pieces.error is not None:
                    raise pieces.error
                tick()
                batch = pieces.ready.pop(index)
            yield batch
    finally:
        pieces.closed.set()
