"""JSON over HTTP with the standard library (the client needs PyNaCl and nothing else)."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from client.errors import ClientError


def call(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
         timeout: float = 60.0) -> tuple[int, Any]:
    """(status, decoded JSON body); an HTTP error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, _json(resp.read(), url)
    except urllib.error.HTTPError as err:
        return err.code, _json(err.read(), url, strict=False)
    except (TimeoutError, socket.timeout):
        raise ClientError("timeout", f"{method} {_where(url)} took longer than {timeout:g} s") from None
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise ClientError("timeout", f"{method} {_where(url)} took longer than {timeout:g} s") from None
        raise ClientError("unreachable", f"{method} {_where(url)}: {reason}") from None


def _json(raw: bytes, url: str, strict: bool = True) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        if not strict:
            return {"detail": raw[:200].decode("utf-8", "replace")}
        raise ClientError("bad_reply", f"{_where(url)} answered something that is not JSON") from None


def _where(url: str) -> str:
    """The URL without its query (nothing secret travels in paths here, but keep logs short)."""
    return url.split("?", 1)[0]
