"""HTTP plumbing of the Pod API: JSON bodies with a size and depth cap, and errors as
`{"error", "detail"}`.

Falcon's own errors (404, 405, bad headers) and anything unexpected are mapped onto the same
shape: a client never sees an HTML page or a traceback.
"""
from __future__ import annotations

import json
from typing import Any

import falcon
import falcon.asgi

from services import jsonlimits, logs
from services.errors import AppError

log = logs.get("api")

MAX_BODY_BYTES = 64 * 2**20  # base64 input images make /run bodies large; RunPod caps at 20 MB

_FALCON_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type"}


async def read_json(req: falcon.asgi.Request) -> Any:
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        raise AppError("payload_too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    raw = await req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise AppError("payload_too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raise AppError("invalid_json", "the request body is empty; send a JSON object")
    try:
        return jsonlimits.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        raise AppError("invalid_json", f"the body is not valid JSON: {exc}"[:300]) from None


def send_json(resp: falcon.asgi.Response, body: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = body if isinstance(body, bytes) else json.dumps(body).encode()


async def app_error(req, resp, exc: AppError, params, ws=None) -> None:
    if ws is not None:
        # A refused websocket upgrade (guard.py): closed before accept, which the server answers
        # with HTTP 403; the code (3000 + status, Falcon's convention) reaches accepted sockets.
        await ws.close(3000 + exc.status)
        return
    if exc.status == 401:
        resp.set_header("WWW-Authenticate", 'Bearer realm="appliance"')  # RFC 6750 §3
    send_json(resp, exc.as_dict(), exc.status)


async def http_error(req, resp, exc: falcon.HTTPError, params, ws=None) -> None:
    status = exc.status_code
    if ws is not None:
        await ws.close(3000 + status)
        return
    code = _FALCON_CODES.get(status, "invalid_payload" if status < 500 else "internal_error")
    detail = exc.description or exc.title or ""
    send_json(resp, {"error": code, "detail": detail}, status)


async def unexpected_error(req, resp, exc: Exception, params, ws=None) -> None:
    # Logged with its type only; the client gets a stable code and no internals.
    log.error("unexpected_error", exc_info=True, path=req.path, method=req.method)
    if ws is not None:
        await ws.close(1011)  # RFC 6455 §7.4.1: an unexpected condition
        return
    send_json(resp, {"error": "internal_error", "detail": "unexpected server error; see the api log"}, 500)


def install(app: falcon.asgi.App) -> None:
    app.add_error_handler(Exception, unexpected_error)
    app.add_error_handler(falcon.HTTPError, http_error)
    app.add_error_handler(AppError, app_error)
