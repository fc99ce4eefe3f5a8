"""Talking to supervisord over its 0700 unix socket (XML-RPC), from inside the Pod's programs."""
from __future__ import annotations

import os
import signal
import time
import xmlrpc.client
from typing import Any

from supervisor.xmlrpc import SupervisorTransport


class Supervisor:
    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    def _rpc(self):
        # One proxy per call: a proxy holds one HTTP connection and is not thread-safe, and
        # callers run in asyncio.to_thread workers.
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def programs(self) -> dict[str, Any]:
        # `uptime`: seconds since supervisord last spawned the program, on supervisord's own
        # clock (`now - start`), so it means the same in every process that asks.
        return {p["name"]: {"state": p["statename"], "pid": p["pid"] or None, "description": p["description"],
                            "uptime": max(0, p["now"] - p["start"]) if p["start"] else None}
                for p in self._rpc().getAllProcessInfo()}

    def restart(self, name: str) -> None:
        """Stop (if running) and start a program without waiting out its `startsecs`: the
        caller watches readiness itself, which is sooner."""
        rpc = self._rpc()
        if rpc.getProcessInfo(name)["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            rpc.stopProcess(name, True)
        rpc.startProcess(name, False)

    def kill_group(self, name: str, min_age: float = 0.0, pid: int | None = None) -> int | None:
        """SIGKILL a running program's process group (supervisord starts each program as a group
        leader; a frozen process ignores SIGTERM) and wait until supervisord has seen it exit, so
        the caller never reaches the old process again. Only a process that has run `min_age`
        seconds (and is `pid`, when given): a younger one is already a restart by someone else.
        Returns the killed pid, or None."""
        rpc = self._rpc()
        info = rpc.getProcessInfo(name)
        # STARTING too: ComfyUI answers (and runs jobs) before supervisord's `startsecs` are up.
        if (info["statename"] not in ("RUNNING", "STARTING") or not info["pid"]
                or (pid is not None and info["pid"] != pid)):
            return None
        if info["now"] - info["start"] < min_age:
            return None
        try:
            os.killpg(info["pid"], signal.SIGKILL)
        except ProcessLookupError:
            return None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and rpc.getProcessInfo(name)["pid"] == info["pid"]:
            time.sleep(0.05)
        return info["pid"]
