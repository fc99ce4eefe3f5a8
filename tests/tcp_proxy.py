"""A TCP proxy on 127.0.0.1 that can sever every open connection (a real dropped socket) and
refuse new websocket upgrades while plain HTTP still passes (a socket that cannot come back)."""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.block_websockets = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        try:
            first = client.recv(65536)
        except OSError:
            return
        if self.block_websockets and b"upgrade: websocket" in first.lower():
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:  # the target is down: the client sees its connection closed, not a hang
            client.close()
            return
        upstream.sendall(first)
        with self._lock:
            self._conns += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pass(self, data: bytes, src: socket.socket, dst: socket.socket) -> bool:
        """Whether to forward this chunk; False ends the connection (subclasses inject faults)."""
        return True

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while (data := src.recv(65536)) and self._pass(data, src, dst):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def sever(self) -> None:
        """Cut every connection open right now (new ones still go through)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.sever()
