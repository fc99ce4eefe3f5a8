"""ComfyUI's own UI through the API port (`/comfy/`, COMFY_UI_PROXY=1).

Against a real Pod (supervisord, two gunicorn workers, the stand-in as `comfyui`; with
COMFYUI_DIR set, a real ComfyUI: `make test-real`): answers equal ComfyUI's direct ones, prompts,
multipart uploads, the websocket's events, and the refusals (no credentials, another site's
page, the proxy switched off). What ComfyUI never does on its own (redirects, binary frames both
ways, large streamed bodies, hop-by-hop headers) is shown against a scripted aiohttp upstream
behind the real API (gunicorn).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from services.api.comfy_proxy import rewrite_location, same_origin
from tests import workflows
from tests.comfy_backends import CUSTOM_NODES, REAL_DIR, real_python
from tests.pod_process import start_pod
from tests.standin_process import REPO_ROOT, free_port, stop_process

TOKEN = "proxy-Token_9"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Volatile between two calls: free memory.
VOLATILE = ("ram_free", "vram_free", "torch_vram_free")


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy-proxy")
    env = {"API_TOKEN": TOKEN, "COMFY_UI_PROXY": "1", "API_WORKERS": "2"}
    comfy_home = "fake"
    if REAL_DIR:  # Pod mode running the real checkout, with the stand-in's nodes (StandinSleep)
        extra = root / "test_nodes.yaml"
        extra.write_text(json.dumps({"tests": {"base_path": str(root), "custom_nodes": str(CUSTOM_NODES)}}))
        env.update({"COMFY_HOME": REAL_DIR, "COMFY_PYTHON": real_python(), "COMFY_CPU": "1",
                    "COMFY_EXTRA_ARGS": f"--extra-model-paths-config {extra}"})
        comfy_home = "missing"
    pod = start_pod(root, env=env, comfy_home=comfy_home, wait=False)
    try:
        pod.wait_running()
        pod.wait_healthy(timeout=180 if REAL_DIR else 60)
    except BaseException:
        pod.stop()
        raise
    yield pod
    pod.stop()


def comfy_direct(pod) -> str:
    return f"http://127.0.0.1:{pod.comfy_port}"


async def fetch(method: str, url, **kwargs) -> tuple[int, bytes, CIMultiDict]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
            return resp.status, await resp.read(), resp.headers.copy()  # case-insensitive


def get_json(url: str, headers=None):
    status, body, _ = asyncio.run(fetch("GET", url, headers=headers or {}))
    return status, json.loads(body)


def without_volatile(value):
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


async def ws_events(url: str, headers: dict, until, *, send=None, timeout: float = 60) -> list:
    """Frames (JSON decoded where it is JSON, else text; binary as bytes) until `until(frames)` holds."""
    frames: list = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, headers=headers) as ws:
            if send is not None:
                await send(ws)
            deadline = time.monotonic() + timeout
            while not until(frames):
                message = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
                if message.type == aiohttp.WSMsgType.TEXT:
                    try:
                        frames.append(json.loads(message.data))
                    except ValueError:
                        frames.append(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    frames.append(message.data)
                else:
                    raise AssertionError(f"websocket ended: {message}")
    return frames


async def handshake_status(url: str, headers: dict) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status


# ---- the rules, without processes ---------------------------------------------------------
ORIGINS = [
    (None, "127.0.0.1:8000", True),
    ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
    ("https://abc-8000.proxy.runpod.net", "abc-8000.proxy.runpod.net", True),  # default port left out
    ("HTTPS://ABC-8000.proxy.runpod.net", "abc-8000.proxy.runpod.net:443", True),
    ("https://evil-8000.proxy.runpod.net", "abc-8000.proxy.runpod.net", False),  # a sibling Pod
    ("http://127.0.0.1:9999", "127.0.0.1:8000", False),
    ("http://localhost:8000", "127.0.0.1:8000", False),
    ("null", "127.0.0.1:8000", False),
    ("file://", "127.0.0.1:8000", False),
    ("http://127.0.0.1:x", "127.0.0.1:8000", False),
]


@pytest.mark.parametrize("origin,host,allowed", ORIGINS)
def test_origin_must_be_the_server_itself(origin, host, allowed):
    assert same_origin(origin, host) is allowed


UPSTREAM = URL("http://127.0.0.1:8188")
LOCATIONS = [
    ("/view?filename=a.png", "/comfy/view?filename=a.png"),
    ("http://127.0.0.1:8188/api/userdata?x=1", "/comfy/api/userdata?x=1"),
    ("next", "next"),  # relative: already under the prefix
    ("https://example.com/x", "https://example.com/x"),
    ("//example.com/x", "//example.com/x"),
]


@pytest.mark.parametrize("location,rewritten", LOCATIONS)
def test_redirects_stay_under_the_prefix(location, rewritten):
    assert rewrite_location(location, UPSTREAM) == rewritten


# ---- a real Pod ---------------------------------------------------------------------------
@pytest.mark.comfy
def test_answers_equal_comfyuis_own(pod):
    # A real ComfyUI creates `input/3d` during its first /object_info, so the folder lists of
    # LoadImageSetFromFolderNode differ between the first answer and later ones: warm it up.
    get_json(comfy_direct(pod) + "/object_info")
    for path in ("/system_stats", "/object_info", "/api/object_info", "/object_info/SaveImage", "/queue"):
        status, proxied = get_json(pod.url + "/comfy" + path, AUTH)
        direct_status, direct = get_json(comfy_direct(pod) + path)
        assert (status, without_volatile(proxied)) == (direct_status, without_volatile(direct)), path
    # The frontend's page and the base it derives from the path: /comfy redirects to /comfy/.
    status, _, headers = asyncio.run(fetch("GET", pod.url + "/comfy?x=1", headers=AUTH))
    assert (status, headers["Location"]) == (308, "/comfy/?x=1")
    status, page, headers = asyncio.run(fetch("GET", pod.url + "/comfy/", headers=AUTH))
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<title>" in page


@pytest.mark.comfy
def test_a_prompt_and_its_websocket_events(pod):
    client_id = uuid.uuid4().hex
    ws_url = pod.url.replace("http", "ws") + f"/comfy/ws?clientId={client_id}"
    prompt_id = {}

    async def submit(ws):
        first = json.loads((await ws.receive(timeout=30)).data)
        assert first["type"] == "status" and first["data"]["sid"] == client_id, first
        await ws.send_str(json.dumps({"type": "feature_flags", "data": {}}))  # client -> ComfyUI
        body = {"prompt": workflows.sleep_then_save(0.6, steps=3), "client_id": client_id}
        status, answer, _ = await fetch("POST", pod.url + "/comfy/prompt", json=body, headers=AUTH)
        assert status == 200, answer
        prompt_id["id"] = json.loads(answer)["prompt_id"]

    def finished(frames):
        return any(f.get("type") == "executing" and f["data"].get("node") is None
                   and f["data"].get("prompt_id") == prompt_id.get("id") for f in frames if isinstance(f, dict))

    frames = asyncio.run(ws_events(ws_url, AUTH, finished, send=submit))
    mine = [f for f in frames if isinstance(f, dict) and f["data"].get("prompt_id") == prompt_id["id"]]
    kinds = [f["type"] for f in mine]
    assert "executing" in kinds, kinds
    assert [(f["data"]["value"], f["data"]["max"]) for f in mine if f["type"] == "progress"] == [(1, 3), (2, 3), (3, 3)]
    assert any(f.get("type") == "feature_flags" for f in frames if isinstance(f, dict))  # its answer came back
    status, history = get_json(pod.url + f"/comfy/history/{prompt_id['id']}", AUTH)
    assert status == 200 and history[prompt_id["id"]]["status"]["status_str"] == "success"


@pytest.mark.comfy
def test_a_multipart_upload_and_its_download(pod):
    content = tiny_png()
    form = aiohttp.FormData()
    form.add_field("image", content, filename=f"proxied-{uuid.uuid4().hex[:8]}.png", content_type="image/png")
    form.add_field("overwrite", "true")
    status, body, _ = asyncio.run(fetch("POST", pod.url + "/comfy/upload/image", data=form, headers=AUTH))
    assert status == 200, body  # multipart, not JSON: the proxy is not under the JSON-only rule
    uploaded = json.loads(body)
    assert uploaded["type"] == "input" and uploaded["name"].startswith("proxied-")
    status, back, headers = asyncio.run(fetch("GET", pod.url + "/comfy/view", headers=AUTH,
                                              params={"filename": uploaded["name"], "type": "input"}))
    assert status == 200 and back == content and headers["Content-Type"] == "image/png"
    status, empty, headers = asyncio.run(fetch("HEAD", pod.url + "/comfy/view", headers=AUTH,
                                               params={"filename": uploaded["name"], "type": "input"}))
    assert (status, empty, headers["Content-Length"]) == (200, b"", str(len(content)))


def tiny_png() -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_no_credentials_no_comfyui(pod):
    status, body = get_json(pod.url + "/comfy/system_stats")
    assert (status, body["error"]) == (401, "unauthorized")
    status, body = get_json(pod.url + "/comfy/system_stats", {"Authorization": "Bearer wrong"})
    assert status == 401
    ws_url = pod.url.replace("http", "ws") + "/comfy/ws?clientId=x"
    assert asyncio.run(handshake_status(ws_url, {})) == 403
    assert asyncio.run(handshake_status(ws_url, {"Authorization": "Bearer wrong"})) == 403
    # A browser cannot send the header: the session cookie (POST /session) opens HTTP and websocket.
    status, _, headers = asyncio.run(fetch("POST", pod.url + "/session", json={"token": TOKEN}))
    assert status == 200, headers
    cookie = {"Cookie": headers["Set-Cookie"].split(";", 1)[0]}
    assert get_json(pod.url + "/comfy/system_stats", cookie)[0] == 200
    frames = asyncio.run(ws_events(ws_url, cookie, lambda frames: frames))
    assert frames[0]["type"] == "status"


def test_another_sites_page_is_refused(pod):
    ws_url = pod.url.replace("http", "ws") + "/comfy/ws?clientId=x"
    own = {"Origin": pod.url}
    assert asyncio.run(handshake_status(ws_url, {**AUTH, "Origin": "https://evil.example"})) == 403
    assert asyncio.run(handshake_status(ws_url, {**AUTH, "Origin": "http://localhost:1"})) == 403
    assert asyncio.run(handshake_status(ws_url, {**AUTH, **own, "Sec-Fetch-Site": "cross-site",
                                                 "Sec-Fetch-Mode": "websocket"})) == 403
    assert asyncio.run(handshake_status(ws_url, {**AUTH, **own, "Sec-Fetch-Site": "same-origin",
                                                 "Sec-Fetch-Mode": "websocket"})) == 101
    body = {"prompt": workflows.image(), "client_id": "x"}
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}):
        status, answer, _ = asyncio.run(fetch("POST", pod.url + "/comfy/prompt", json=body,
                                              headers={**AUTH, **headers}))
        assert (status, json.loads(answer)["error"]) == (403, "origin_not_allowed"), headers
    # Framing the editor from a sibling Pod (clickjacking) is refused; following a link to it is not.
    sibling = {**AUTH, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"}
    assert asyncio.run(fetch("GET", pod.url + "/comfy/", headers={**sibling, "Sec-Fetch-Dest": "iframe"}))[0] == 403
    assert asyncio.run(fetch("GET", pod.url + "/comfy/", headers={**sibling, "Sec-Fetch-Dest": "document"}))[0] == 200
    status, answer, _ = asyncio.run(fetch("POST", pod.url + "/comfy/prompt", json=body, headers={**AUTH, **own}))
    assert status == 200, answer


def test_switched_off_it_is_an_unknown_route(pod, tmp_path):
    assert "/comfy/{path}" in get_json(pod.url + "/openapi.json")[1]["paths"]
    off = start_pod(tmp_path, env={"API_TOKEN": TOKEN, "API_WORKERS": "1"})
    try:
        for path in ("/comfy/system_stats", "/comfy/", "/comfy"):
            status, body = get_json(off.url + path, AUTH)
            assert (status, body["error"]) == (404, "not_found"), path
        assert asyncio.run(handshake_status(off.url.replace("http", "ws") + "/comfy/ws", AUTH)) == 403
        assert "/comfy/{path}" not in get_json(off.url + "/openapi.json")[1]["paths"]  # documented where served
    finally:
        off.stop()


# ---- what ComfyUI does not show: a scripted upstream behind the real API --------------------
BIG = bytes(range(256)) * 12_288  # 3 MiB
PREVIEW = b"\x00\x00\x00\x01\x00\x00\x00\x02" + b"\x89PNG fake preview"  # PREVIEW_IMAGE, PNG


class Upstream:
    """An aiohttp server in a thread of the test, standing where ComfyUI would."""

    def __init__(self):
        self.port = free_port()
        self.seen: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes([web.get("/redirect/{kind}", self.redirect), web.post("/echo", self.echo),
                        web.get("/big", self.big), web.get("/ws", self.websocket), web.get("/system_stats", self.stats)])
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    async def stats(self, request):
        return web.json_response({"system": {}, "devices": []})

    async def redirect(self, request):
        kind = request.match_info["kind"]
        location = {"root": "/target?a=1", "absolute": f"http://127.0.0.1:{self.port}/target", "away": "https://example.com/"}[kind]
        return web.Response(status=302, headers={"Location": location})

    async def echo(self, request):
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        self.seen.append(dict(request.headers))
        return web.json_response({"size": size, "sha256": digest.hexdigest(), "raw_path": request.raw_path})

    async def big(self, request):
        resp = web.StreamResponse(headers={"X-Upstream": "yes", "Set-Cookie": "comfy=1", "Keep-Alive": "timeout=5"})
        await resp.prepare(request)  # chunked: no Content-Length
        for start in range(0, len(BIG), 100_000):
            await resp.write(BIG[start:start + 100_000])
        await resp.write_eof()
        return resp

    async def websocket(self, request):
        self.seen.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(PREVIEW)
        async for message in ws:  # echo, keeping the frame type
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + message.data)
        return ws

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """The real API (gunicorn, one uvicorn worker) whose ComfyUI is the scripted upstream."""
    root = tmp_path_factory.mktemp("scripted")
    with Upstream() as upstream:
        port = free_port()
        env = {**os.environ, "DATA_ROOT": str(root), "API_PORT": str(port), "COMFY_PORT": str(upstream.port),
               "API_TOKEN": TOKEN, "COMFY_UI_PROXY": "1", "API_WORKERS": "1", "COMFY_HANG_TIMEOUT": "0",
               "PYTHONPATH": str(REPO_ROOT)}
        with open(root / "api.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "etc" / "gunicorn.conf.py"),
                                     "services.api.app:create_app()"], cwd=REPO_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, (root / "api.log").read_text()
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", upstream
        finally:
            stop_process(proc, 30)


def test_redirects_come_back_under_the_prefix(scripted):
    url, _ = scripted
    for kind, location in (("root", "/comfy/target?a=1"), ("absolute", "/comfy/target"), ("away", "https://example.com/")):
        status, _, headers = asyncio.run(fetch("GET", url + f"/comfy/redirect/{kind}", headers=AUTH))
        assert (status, headers["Location"]) == (302, location)


def test_bodies_stream_both_ways_and_only_end_to_end_headers_pass(scripted):
    url, upstream = scripted

    async def chunks():  # a chunked upload of unknown length
        for start in range(0, len(BIG), 300_000):
            yield BIG[start:start + 300_000]
            await asyncio.sleep(0)

    headers = {**AUTH, "Cookie": "appliance_session=x", "X-Comfy-Test": "kept", "Connection": "keep-alive, X-Hop",
               "X-Hop": "dropped", "Origin": url, "Content-Type": "application/octet-stream"}
    status, body, _ = asyncio.run(fetch("POST", URL(url + "/comfy/echo?a=%2F&b=1", encoded=True), data=chunks(), headers=headers))
    assert status == 200, body
    echoed = json.loads(body)
    assert echoed == {"size": len(BIG), "sha256": hashlib.sha256(BIG).hexdigest(), "raw_path": "/echo?a=%2F&b=1"}
    seen = {k.lower(): v for k, v in upstream.seen[-1].items()}
    assert seen["x-comfy-test"] == "kept" and seen["content-type"] == "application/octet-stream"
    for gone in ("authorization", "cookie", "origin", "x-hop"):
        assert gone not in seen, gone

    status, body, headers = asyncio.run(fetch("GET", url + "/comfy/big", headers=AUTH))
    assert status == 200 and body == BIG and headers["X-Upstream"] == "yes"
    assert "Set-Cookie" not in headers and "Keep-Alive" not in headers


def test_binary_and_text_frames_both_ways(scripted):
    url, upstream = scripted

    async def talk(ws):
        await ws.send_bytes(b"\x01\x02")
        await ws.send_str("hello")

    frames = asyncio.run(ws_events(url.replace("http", "ws") + "/comfy/ws?clientId=abc", {**AUTH, "Cookie": "c=1"},
                                   lambda frames: len(frames) >= 3, send=talk))
    assert frames[0] == PREVIEW  # ComfyUI -> browser, binary (a preview)
    assert sorted(frames[1:], key=str) == [b"echo:\x01\x02", "echo:hello"]  # browser -> ComfyUI -> browser
    seen = {k.lower(): v for k, v in upstream.seen[-1].items()}
    assert "authorization" not in seen and "cookie" not in seen


def test_comfyui_down_is_a_catalogued_503(tmp_path):
    port, dead = free_port(), free_port()
    env = {**os.environ, "DATA_ROOT": str(tmp_path), "API_PORT": str(port), "COMFY_PORT": str(dead),
           "COMFY_UI_PROXY": "1", "API_WORKERS": "1", "COMFY_HANG_TIMEOUT": "0", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "etc" / "gunicorn.conf.py"),
                             "services.api.app:create_app()"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = get_json(f"http://127.0.0.1:{port}/comfy/system_stats")
                break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert (status, body["error"]) == (503, "comfy_unreachable")
        assert asyncio.run(handshake_status(f"ws://127.0.0.1:{port}/comfy/ws", {})) == 403
    finally:
        stop_process(proc, 30)
