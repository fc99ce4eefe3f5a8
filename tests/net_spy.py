"""Which sockets a block of code tried to connect, and which names it looked up.

An audit hook (PEP 578) sees every `socket.connect` and `socket.getaddrinfo` of this process,
from any library and any thread, before the system call is made: so a refusal proven with it
happened before any packet could leave. Hooks cannot be removed; this one records only while a
`spy()` block is open.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class NetLog:
    connects: list = field(default_factory=list)   # (host, port) as passed to connect()
    lookups: list = field(default_factory=list)    # host names passed to getaddrinfo

    def connected_hosts(self) -> set[str]:
        return {address[0] for address in self.connects if isinstance(address, tuple)}


_open: list[NetLog] = []
_lock = threading.Lock()


def _hook(event: str, args: tuple) -> None:
    if not _open or event not in ("socket.connect", "socket.getaddrinfo"):
        return
    with _lock:
        for log in _open:
            if event == "socket.connect":
                log.connects.append(args[1])
            else:
                log.lookups.append(args[0])


sys.addaudithook(_hook)


@contextmanager
def spy() -> Iterator[NetLog]:
    log = NetLog()
    with _lock:
        _open.append(log)
    try:
        yield log
    finally:
        with _lock:
            _open.remove(log)
