"""Talking to supervisord over its 0700 unix socket (XML-RPC), from inside the Pod's programs."""
from __future__ import annotations

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
        return {p["name"]: {"state": p["statename"], "pid": p["pid"] or None, "description": p["description"]}
                for p in self._rpc().getAllProcessInfo()}

    def restart(self, name: str) -> None:
        """Stop (if running) and start a program without waiting out its `startsecs`: the
        caller watches readiness itself, which is sooner."""
        rpc = self._rpc()
        if rpc.getProcessInfo(name)["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            rpc.stopProcess(name, True)
        rpc.startProcess(name, False)
