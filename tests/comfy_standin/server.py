"""ComfyUI's HTTP and websocket routes, on aiohttp like the real server.

Using aiohttp the same way ComfyUI does keeps the details clients can see identical:
`application/json; charset=utf-8` bodies from `web.json_response`, empty `web.Response`
answers, aiohttp's plain-text 500 page when a handler fails (e.g. a body that is not JSON),
413 above `--max-upload-size`, and HEAD on every GET route. Every route is served both at
`/path` and `/api/path`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import mimetypes
import os
import threading
import urllib.parse
import uuid
from io import BytesIO

from aiohttp import WSMsgType, web
from PIL import Image

from . import files, system_info
from .config import Config
from .executor import PromptExecutor
from .nodes import Node, object_info
from .prompt_queue import PromptQueue, QueueItem
from .validation import prompt_error, validate_prompt

log = logging.getLogger("comfy_standin")

# extra_data keys that hold credentials: ComfyUI keeps them out of /queue and /history.
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
# Served as downloads, never rendered, so an uploaded page can't run in the UI's origin.
DOWNLOAD_ONLY_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}


class SocketHub:
    """Websocket clients by id, and one ordered outbox that any thread may post to."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._outbox: asyncio.Queue = asyncio.Queue()

    def send(self, event: str, data: dict, sid: str | None) -> None:
        # Serialised here so that later changes by the sending thread can't leak into the message.
        text = json.dumps({"type": event, "data": data})
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, (text, sid))

    def flush(self, timeout: float) -> None:
        done = threading.Event()
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, (done, None))
        done.wait(timeout)

    def register(self, sid: str, ws: web.WebSocketResponse) -> None:
        """A reconnect with the same id replaces the old socket, which gets nothing more."""
        self._sockets[sid] = ws

    def unregister(self, sid: str, ws: web.WebSocketResponse) -> None:
        if self._sockets.get(sid) is ws:
            del self._sockets[sid]

    async def publish_forever(self) -> None:
        while True:
            text, sid = await self._outbox.get()
            if isinstance(text, threading.Event):
                text.set()
                continue
            targets = list(self._sockets.values()) if sid is None else [self._sockets.get(sid)]
            for ws in filter(None, targets):
                try:
                    await ws.send_str(text)
                except ConnectionError as error:  # the client went away mid-send
                    log.warning("send error: %s", error)

    async def close_all(self) -> None:
        for ws in list(self._sockets.values()):
            await ws.close()


class ComfyServer:
    def __init__(self, config: Config, node_types: dict[str, type[Node]], hub: SocketHub):
        self.config = config
        self.paths = config.paths
        self.node_types = node_types
        self.hub = hub
        self.queue = PromptQueue(on_change=self._queue_changed)
        self.executor = PromptExecutor(node_types, self.paths, hub, config.disable_metadata)
        self._next_number = 0

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def _queue_changed(self) -> None:
        self.hub.send("status", {"status": self.queue_info()}, None)

    def app(self) -> web.Application:
        middlewares = [_cors(self.config.cors_origin) if self.config.cors_origin else _same_origin_only]
        app = web.Application(client_max_size=self.config.max_upload_bytes, middlewares=middlewares)
        routes = self._routes()
        app.add_routes([web.route(r.method, "/api" + r.path, r.handler) for r in routes])
        app.add_routes(routes)
        app.on_shutdown.append(lambda _: self.hub.close_all())
        return app

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.get("/ws", self.websocket),
            web.get("/prompt", self.get_prompt),
            web.post("/prompt", self.post_prompt),
            web.get("/queue", self.get_queue),
            web.post("/queue", self.post_queue),
            web.post("/interrupt", self.post_interrupt),
            web.post("/free", self.post_free),
            web.get("/history", self.get_history),
            web.get("/history/{prompt_id}", self.get_history_entry),
            web.post("/history", self.post_history),
            web.get("/view", self.view),
            web.post("/upload/image", self.upload_image),
            web.get("/object_info", self.get_object_info),
            web.get("/object_info/{node_class}", self.get_object_info_one),
            web.get("/embeddings", self.get_embeddings),
            web.get("/models", self.get_model_folders),
            web.get("/models/{folder}", self.get_models),
            web.get("/system_stats", self.get_system_stats),
            web.get("/features", self.get_features),
        ]

    async def index(self, request: web.Request) -> web.Response:
        # The real server serves its web frontend here; a stub page is enough for probes.
        return web.Response(text="<!DOCTYPE html><title>ComfyUI</title>", content_type="text/html")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        self.hub.register(sid, ws)
        try:
            await ws.send_json({"type": "status", "data": {"status": self.queue_info(), "sid": sid}})
            if self.executor.client_id == sid and self.executor.last_node_id is not None:
                await ws.send_json({"type": "executing", "data": {"node": self.executor.last_node_id}})
            first_message = True
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(message.data)
                except ValueError:
                    continue
                if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                    await ws.send_json({"type": "feature_flags",
                                        "data": system_info.features(self.config.max_upload_bytes)})
                first_message = False
        finally:
            self.hub.unregister(sid, ws)
        return ws

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        log.info("got prompt")
        # Not JSON: the exception becomes aiohttp's plain-text 500 page, exactly as in ComfyUI.
        body = await request.json()
        # The number is taken before validation, so rejected prompts use up numbers too.
        if "number" in body:
            number = float(body["number"])
        else:
            number = -self._next_number if "front" in body and body["front"] else self._next_number
            self._next_number += 1
        if "prompt" not in body:
            error = prompt_error("no_prompt", "No prompt provided", "No prompt provided")
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt_id = body["prompt_id"] if "prompt_id" in body else str(uuid.uuid4())
        if not _is_canonical_uuid(prompt_id):
            error = prompt_error("invalid_prompt_id", "Invalid prompt_id",
                                 f"prompt_id must be a lowercase canonical UUID, got {prompt_id!r}")
            return web.json_response({"error": error, "node_errors": {}}, status=400)

        prompt = body["prompt"]
        outcome = validate_prompt(prompt, self.node_types, self.paths, body.get("partial_execution_targets"))
        if not outcome.ok:
            log.warning("invalid prompt: %s", outcome.error)
            return web.json_response({"error": outcome.error, "node_errors": outcome.node_errors}, status=400)
        extra_data = body["extra_data"] if "extra_data" in body else {}
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        sensitive = {key: extra_data.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra_data}
        self.queue.put(QueueItem(number, prompt_id, prompt, extra_data, outcome.outputs, sensitive))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": outcome.node_errors})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response({"queue_running": self.queue.running(), "queue_pending": self.queue.pending()})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "clear" in body and body["clear"]:
            self.queue.clear_pending()
        for prompt_id in body.get("delete", []):
            self.queue.delete_pending(prompt_id)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id")
        if not prompt_id:
            log.info("Global interrupt (no prompt_id specified)")
            self.executor.interrupt()
        elif self.queue.is_running(prompt_id):
            log.info("Interrupting prompt %s", prompt_id)
            self.executor.interrupt()
        else:
            log.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
        return web.Response(status=200)

    async def post_free(self, request: web.Request) -> web.Response:
        body = await request.json()
        free_memory = body.get("free_memory", False)
        # Models are never loaded, so only freeing memory (which drops the cache) has an effect.
        if free_memory:
            self.queue.set_flag("free_memory", free_memory)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(self.queue.history(max_items, offset))

    async def get_history_entry(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.history_entry(request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "clear" in body and body["clear"]:
            self.queue.clear_history()
        for prompt_id in body.get("delete", []):
            self.queue.delete_history(prompt_id)
        return web.Response(status=200)

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        try:
            path = files.view_path(self.paths, query["filename"], query.get("subfolder"),
                                   query.get("type", "output"))
        except files.Refused as refused:
            return web.Response(status=refused.status)
        name = os.path.basename(path)
        disposition = {"Content-Disposition": f'filename="{name}"'}
        if "preview" in query:
            return _preview(path, query["preview"], query.get("channel", ""), disposition)
        channel = query.get("channel", "rgba")
        if channel in ("rgb", "a"):
            return web.Response(body=_channel_png(path, channel), content_type="image/png", headers=disposition)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type in DOWNLOAD_ONLY_TYPES:
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        kind = post.get("type")
        kind = "input" if kind is None else kind
        folder = self.paths.by_type(kind)
        if folder is None:
            # ComfyUI crashes on an unknown type; aiohttp turns that into its plain 500 page.
            raise ValueError(f"unknown upload type {kind!r}")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        content = image.file.read()
        subfolder = post.get("subfolder", "")
        try:
            path, name, exists = files.upload_path(folder, subfolder, image.filename, content,
                                                   overwrite=post.get("overwrite") in ("true", "1"))
        except files.Refused as refused:
            return web.Response(status=refused.status)
        if not exists:
            with open(path, "wb") as f:
                f.write(content)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response({name: object_info(node, self.paths) for name, node in self.node_types.items()})

    async def get_object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        node = self.node_types.get(name)
        return web.json_response({name: object_info(node, self.paths)} if node else {})

    async def get_embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([os.path.splitext(f)[0] for f in self.paths.model_files("embeddings")])

    async def get_model_folders(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.paths.model_dirs))

    async def get_models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in self.paths.model_dirs:
            return web.Response(status=404)
        return web.json_response(self.paths.model_files(folder))

    async def get_system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(system_info.system_stats())

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(system_info.features(self.config.max_upload_bytes))


def _is_canonical_uuid(value: object) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _preview(path: str, preview: str, channel: str, headers: dict) -> web.Response:
    """A re-encoded preview: `preview=webp;90` or `jpeg;80`; with an alpha channel always webp."""
    options = preview.split(";")
    image_format = options[0] if options[0] in ("webp", "jpeg") and "a" not in channel else "webp"
    quality = int(options[-1]) if options[-1].isdigit() else 90
    with Image.open(path) as image:
        buffer = BytesIO()
        image.convert("RGB").save(buffer, format=image_format, quality=quality)
    return web.Response(body=buffer.getvalue(), content_type=f"image/{image_format}", headers=headers)


def _channel_png(path: str, channel: str) -> bytes:
    """`channel=rgb` drops alpha; `channel=a` returns the alpha as an RGBA PNG's alpha."""
    with Image.open(path) as image:
        if channel == "rgb":
            result = image.convert("RGB")
        else:
            alpha = image.getchannel("A") if image.mode == "RGBA" else Image.new("L", image.size, 255)
            result = Image.new("RGBA", alpha.size)
            result.putalpha(alpha)
        buffer = BytesIO()
        result.save(buffer, format="PNG")
    return buffer.getvalue()


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def _same_origin_only(request: web.Request, handler):
    """ComfyUI refuses (403) a request to a loopback host whose Origin names another host.

    That stops any website from queueing prompts on a local ComfyUI through the browser;
    it also bites reverse proxies that forward a browser's Origin but rewrite Host.
    """
    if "Host" in request.headers and "Origin" in request.headers:
        host = urllib.parse.urlsplit("//" + request.headers["Host"].lower())
        origin = urllib.parse.urlparse(request.headers["Origin"])
        host_name, origin_name = host.netloc, origin.netloc.lower()
        # A side without a port is compared by host name only, as browsers differ here.
        if origin.port is None:
            host_name = host.hostname
        if host.port is None:
            origin_name = origin.hostname
        if _is_loopback(host.hostname) and host_name and origin_name and host_name != origin_name:
            log.warning("WARNING: request with non matching host and origin %s != %s, returning 403",
                        host_name, origin_name)
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def _cors(origin: str):
    @web.middleware
    async def cors(request: web.Request, handler):
        response = web.Response() if request.method == "OPTIONS" else await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
        response.headers["Access-Control-Allow-Credentials"] = "true"
        return response
    return cors
