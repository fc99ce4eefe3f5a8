"""A real HTTP server on 127.0.0.1 whose routes misbehave on purpose (404, stall, huge, not JSON).

Tests register handlers per path; each handler gets the request handler object and writes the
answer itself, so a route can also drop the connection or stall mid-body.
"""
from __future__ import annotations

import http.server
import socket
import sys
import threading
from typing import Callable

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _dispatch(self) -> None:
        route = self.server.routes.get(self.path.split("?", 1)[0])  # type: ignore[attr-defined]
        self.server.hits.append((self.command, self.path, dict(self.headers)))  # type: ignore[attr-defined]
        if route is None:
            send(self, 404, b"not found")
            return
        route(self)

    do_GET = do_POST = do_PUT = do_HEAD = _dispatch

    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-answer is what fault tests do on purpose: no traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LocalServer:
    def __init__(self) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _RequestHandler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.hits = []
        # A short poll keeps shutdown() (each test's teardown) from waiting the default 0.5 s.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def hits(self) -> list:
        return self.httpd.hits

    def route(self, path: str, handler: Handler) -> str:
        self.httpd.routes[path] = handler
        return self.url + path

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(req: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
         content_type: str = "application/octet-stream", headers: dict | None = None) -> None:
    req.send_response(status)
    req.send_header("Content-Type", content_type)
    req.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        req.send_header(key, value)
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(body)


def static(body: bytes, status: int = 200, content_type: str = "application/json") -> Handler:
    return lambda req: send(req, status, body, content_type)


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (a connection to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
