"""HTTP requests with every header under the test's control (Host included, or left out), for the
attack tables: urllib would always add a Host and a form Content-Type of its own."""
from __future__ import annotations

import http.client
import json
from typing import Any

DEFAULT = object()  # "send the Host header a normal client would"


def request(port: int, method: str, path: str, *, body: bytes | None = None, host: Any = DEFAULT,
            headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, Any, http.client.HTTPMessage]:
    """One request; returns (status, JSON body or text, response headers). host=None sends no Host."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is DEFAULT:
            host = f"127.0.0.1:{port}"
        if host is not None:
            conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return resp.status, parsed, resp.headers
    finally:
        conn.close()


def post_json(port: int, path: str, body: Any, *, headers: dict[str, str] | None = None,
              timeout: float = 60) -> tuple[int, Any, http.client.HTTPMessage]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(port, "POST", path, body=raw, headers={"Content-Type": "application/json", **(headers or {})},
                   timeout=timeout)
