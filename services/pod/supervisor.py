"""Talking to supervisord over its 0700 unix socket (XML-RPC), from inside the Pod's programs."""
from __future__ import annotations

import xmlrpc.client
from typing import Any

from supervisor.xmlrpc import SupervisorTransport


class Supervisor:
    def __init__(self, socket_path: str):
        transport = SupervisorTransport(None, None, serverurl=f"unix://{socket_path}")
        self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def programs(self) -> dict[str, Any]:
        return {p["name"]: {"state": p["statename"], "pid": p["pid"] or None, "description": p["description"]}
                for p in self._proxy.supervisor.getAllProcessInfo()}

    def restart(self, name: str) -> None:
        """Stop (if running) and start a program; start waits for its `startsecs`."""
        info = self._proxy.supervisor.getProcessInfo(name)
        if info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            self._proxy.supervisor.stopProcess(name, True)
        self._proxy.supervisor.startProcess(name, True)
