"""`/comfy/...`: ComfyUI's own web UI (the graph editor) through the API port, when
COMFY_UI_PROXY=1.

ComfyUI has no authentication, so it stays on loopback; a Pod user reaches it through RunPod's
proxy and this route, behind the API's guard (Host, token or session; services/api/guard.py,
which also checks websocket upgrades). `/comfy/<path>?<query>` goes to ComfyUI's `/<path>?<query>`:

- HTTP: every method, bodies streamed both ways (uploads, `/view` downloads), headers minus the
  hop-by-hop ones and minus the caller's credentials (Authorization, Cookie: they are the API's,
  never ComfyUI's); redirects are passed on with their Location put back under `/comfy/`.
- Websockets (`/comfy/ws?clientId=...`): text frames (events) and binary frames (previews)
  bridged both ways, frame by frame.

ComfyUI's frontend derives its base from the page's path (`location.pathname` up to the last
`/`), so under `/comfy/` it calls `/comfy/api/...` and `/comfy/ws`; `/comfy` itself is redirected
to `/comfy/`, where that base is right.

CSRF: the guard's JSON-only rule cannot hold here (the frontend uploads multipart bodies), so
this route refuses instead any request whose `Origin` is not the server it is sent to, as ComfyUI
itself does on loopback. Browsers send `Origin` on every websocket handshake and on every request
but GET and HEAD, so a page of another site can neither post here nor open the websocket, even on
a token-less `make run`. The checked Origin is not passed on: ComfyUI would compare it with the
loopback Host it is reached by and refuse every request.
"""
from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

import aiohttp
import falcon
import falcon.asgi
from yarl import URL

from services import logs
from services.errors import AppError

log = logs.get("api.comfy_proxy")

PREFIX = "/comfy"
# RFC 9110 §7.6.1, plus the pre-standard ones still seen: they describe one connection, not the message.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade"})
# The API's own credentials and what the upstream connection sets itself.
NOT_FORWARDED = frozenset({"host", "authorization", "cookie", "origin", "expect"})
# Set-Cookie from ComfyUI would land on the API's origin and ride along to every API route.
NOT_RETURNED = frozenset({"set-cookie"})
# Close codes an endpoint may not send (RFC 6455 §7.4.1); a dropped upstream becomes 1011.
_UNSENDABLE_CLOSE = frozenset({1004, 1005, 1006, 1015})


class RawFrames:
    """A websocket media handler that hands frames over untouched: the bridge forwards them."""

    def serialize(self, media):  # pragma: no cover - the bridge sends with send_text/send_data
        return media

    def deserialize(self, payload):
        return payload


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether an `Origin` header names the server the request was sent to (its `Host`).

    No Origin is a non-browser client or a browser's GET, both fine; `null` (sandboxed frames,
    privacy redirects) is never this server. A side without a port is compared by name only, as
    ComfyUI does: browsers leave the default port out of Origin, proxies out of Host."""
    if origin is None:
        return True
    parsed = urlsplit(origin.strip().lower())
    target = urlsplit("//" + (host or "").strip().lower())
    try:
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not target.hostname:
            return False
        if parsed.port is None or target.port is None:
            return parsed.hostname == target.hostname
        return (parsed.hostname, parsed.port) == (target.hostname, target.port)
    except ValueError:  # a port that is not a number
        return False


def from_this_site(req) -> bool:
    """Whether a browser sent `req` from this server's own pages (or a non-browser sent it).

    The Origin must be this server; and where the browser says where the request comes from
    (`Sec-Fetch-Site`, RFC-less but in every current browser), a request another site's page
    made is refused unless it is a plain top-level navigation to a page: that also stops GETs
    with side effects and framing the editor (clickjacking) by a sibling `*.proxy.runpod.net`
    Pod, whose pages count as the same site and so get the SameSite cookie sent along."""
    if not same_origin(req.get_header("Origin"), req.get_header("Host")):
        return False
    site = (req.get_header("Sec-Fetch-Site") or "").lower()
    if site in ("", "same-origin", "none"):
        return True
    return (req.method in ("GET", "HEAD") and (req.get_header("Sec-Fetch-Mode") or "").lower() == "navigate"
            and (req.get_header("Sec-Fetch-Dest") or "document").lower() == "document")


def connection_named(values) -> frozenset:
    """Headers a `Connection` header names: hop-by-hop for this one message (RFC 9110 §7.6.1)."""
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def _forwarded(raw_headers, *, extra_drop: frozenset = frozenset()) -> list[tuple[str, str]]:
    """The caller's headers for ComfyUI: hop-by-hop ones, those the Connection header names, the
    API's credentials and `extra_drop` left out; repeated headers kept in order."""
    headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw_headers]
    dropped = HOP_BY_HOP | NOT_FORWARDED | connection_named(v for n, v in headers if n == "connection") | extra_drop
    return [(name, value) for name, value in headers if name not in dropped]


def rewrite_location(location: str, upstream: URL) -> str:
    """A redirect of ComfyUI's, as the browser must follow it: paths from ComfyUI's root and
    absolute URLs naming ComfyUI itself go under /comfy/; relative and foreign ones stay."""
    if location.startswith("/") and not location.startswith("//"):
        return PREFIX + location
    parsed = urlsplit(location)
    if parsed.scheme in ("http", "https") and parsed.netloc.lower() == f"{upstream.host}:{upstream.port}".lower():
        return PREFIX + (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    return location


class _Body:
    """ComfyUI's answer body for Falcon to stream; `close()` (called by Falcon when the body is
    done or the client went away) gives the connection back."""

    def __init__(self, upstream: aiohttp.ClientResponse):
        self.upstream = upstream

    def __aiter__(self):
        # Whatever has arrived, as it arrives: not Falcon's 8 KiB reads, which slow large /view files.
        return self.upstream.content.iter_any().__aiter__()

    async def close(self) -> None:
        self.upstream.release()


class ComfyProxy:
    """`/comfy`'s handler; one aiohttp session per API worker, made on first use (it must
    belong to the worker's event loop, and a disabled proxy never makes one) and closed with
    the worker."""

    def __init__(self, base_url: str):
        self.base = URL(base_url.rstrip("/"))
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Bytes pass through as ComfyUI encoded them (gzip included, Content-Length intact).
                auto_decompress=False,
                # No cookie jar: one user's cookies from ComfyUI must never be replayed for another.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Only the caller's own headers: no aiohttp User-Agent, Accept-Encoding or Content-Type.
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                # Streams and websockets live long; a ComfyUI that stops answering is restarted
                # by the hang watch (COMFY_HANG_TIMEOUT), which ends these connections.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                connector=aiohttp.TCPConnector(limit=256))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _target(self, req) -> URL:
        # The path as the client sent it (still percent-encoded), so `%2F` in a file name stays one.
        raw = req.scope.get("raw_path") or req.path.encode()
        path = raw.decode("latin-1")[len(PREFIX):]
        query = req.scope.get("query_string", b"").decode("latin-1")
        return URL(f"{self.base}{path}" + (f"?{query}" if query else ""), encoded=True)

    async def handle(self, req, resp, ws=None) -> None:
        """The sink: Falcon passes `ws` for a websocket upgrade, `resp` for HTTP."""
        if ws is not None:
            await self._bridge(req, ws)
            return
        if not from_this_site(req):
            raise AppError("origin_not_allowed", "this request comes from another site's page (Origin, "
                                                 "Sec-Fetch-Site): only this server's own pages may use /comfy/")
        if req.path == PREFIX:  # the frontend takes its base from the path: it needs the slash
            resp.status = falcon.HTTP_308
            query = req.scope.get("query_string", b"").decode("latin-1")
            resp.set_header("Location", PREFIX + "/" + (f"?{query}" if query else ""))
            return
        await self._forward(req, resp)

    async def _forward(self, req, resp) -> None:
        has_body = bool(req.content_length) or req.get_header("Transfer-Encoding") is not None
        try:
            upstream = await self._http().request(
                req.method, self._target(req), headers=_forwarded(req.scope["headers"]),
                data=self._request_body(req) if has_body else None, allow_redirects=False)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise AppError("comfy_unreachable", f"ComfyUI did not answer: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise AppError("comfy_protocol_error", f"ComfyUI's answer could not be read: {type(exc).__name__}") from None
        resp.status = upstream.status
        named = connection_named(upstream.headers.getall("Connection", ()))
        for name, value in upstream.headers.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in NOT_RETURNED or lower in named:
                continue
            resp.append_header(name, rewrite_location(value, self.base) if lower == "location" else value)
        if req.method == "HEAD":
            upstream.release()
        else:
            resp.stream = _Body(upstream)

    @staticmethod
    async def _request_body(req):
        async for chunk in req.stream:
            yield chunk

    async def _bridge(self, req, ws: falcon.asgi.WebSocket) -> None:
        """Host and credentials were checked by the guard (process_request_ws); where from, here."""
        if not from_this_site(req):
            log.warning("comfy_ws_refused", reason="other_site", origin=(req.get_header("Origin") or "")[:100])
            await ws.close(3403)  # before accept: the handshake is refused (HTTP 403)
            return
        target = self._target(req)
        try:
            upstream = await self._http().ws_connect(
                target.with_scheme("wss" if target.scheme == "https" else "ws"),
                headers=_forwarded(req.scope["headers"], extra_drop=frozenset(
                    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                     "sec-websocket-protocol"})),
                protocols=tuple(ws.subprotocols), max_msg_size=0, autoping=True)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("comfy_ws_unreachable", error=type(exc).__name__)
            await ws.close(3503)
            return
        async with upstream:
            await ws.accept(subprotocol=upstream.protocol)
            to_comfy = asyncio.create_task(self._client_to_comfy(ws, upstream))
            to_client = asyncio.create_task(self._comfy_to_client(upstream, ws))
            try:
                await asyncio.wait({to_comfy, to_client}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (to_comfy, to_client):
                    task.cancel()
                await asyncio.gather(to_comfy, to_client, return_exceptions=True)
            code = upstream.close_code
        if not ws.closed:
            await ws.close(code if code and 1000 <= code < 5000 and code not in _UNSENDABLE_CLOSE else 1011)

    @staticmethod
    async def _client_to_comfy(ws: falcon.asgi.WebSocket, upstream: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                frame = await ws.receive_media()  # str or bytes, untouched (RawFrames)
                if isinstance(frame, str):
                    await upstream.send_str(frame)
                else:
                    await upstream.send_bytes(bytes(frame))
        except falcon.WebSocketDisconnected:
            pass

    @staticmethod
    async def _comfy_to_client(upstream: aiohttp.ClientWebSocketResponse, ws: falcon.asgi.WebSocket) -> None:
        try:
            async for message in upstream:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_text(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_data(message.data)
        except falcon.WebSocketDisconnected:
            pass


def route(app: falcon.asgi.App, settings, proxy: ComfyProxy) -> None:
    """Mount the proxy when COMFY_UI_PROXY is on; off, `/comfy/...` is an unknown route (404)."""
    if not settings.comfy_ui_proxy:
        return
    # The bridge is the app's only websocket route: frames are forwarded, never parsed.
    app.ws_options.media_handlers[falcon.WebSocketPayloadType.TEXT] = RawFrames()
    app.ws_options.media_handlers[falcon.WebSocketPayloadType.BINARY] = RawFrames()
    app.add_sink(proxy.handle, re.compile(rf"{PREFIX}(?=/|$)"))
