"""Async client for ComfyUI's HTTP + websocket API (aiohttp).

One `ComfyClient` per process and event loop keeps one websocket open with its own client id
and routes per-prompt events to the jobs waiting on them: ComfyUI sends `executing`,
`progress` and `executed` only to the socket whose id is the prompt's `client_id`, so every
prompt is submitted with that id. A job ends on the final `executing {node: null}` for its
prompt (history is written by then; `execution_success` comes earlier).

Websockets go silent or drop (ComfyUI#9393, comfy-cli#200), so every wait also checks
`/queue` and `/history` on its own: often when the socket is down, rarely when it is up.
A prompt found in neither means ComfyUI lost it (crash or restart): `comfy_crashed`.

A running prompt that shows no sign of life (an event for it, or sitting in the queue behind
others) for its stall timeout ends the wait with `comfy_stalled`: a node stuck in a CUDA call,
a deadlocked custom node or a frozen process never ends on its own, and without the watchdog its
job and every job behind it would wait out `JOB_TIMEOUT` (the runner then recovers ComfyUI).
The client never knows whether it talks to a real ComfyUI or the test stand-in.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp

from services import logs
from services.comfy.history import PromptOutcome, collect_outputs, raise_for_failure
from services.errors import AppError
from services.timeouts import at_most

log = logs.get("comfy.client")

_DISCONNECTED = {"type": "_disconnected"}
_PENDING, _RUNNING = "pending", "running"  # where _poll found a prompt
_CONNECTED = {"type": "_connected"}
_BUFFER_PROMPTS = 256   # prompts whose events arrived before anyone waited on them
_BUFFER_EVENTS = 64     # per prompt; later progress frames of an orphan are dropped
_VIEW_CHUNK = 1 << 20   # bytes per read of a streamed output: memory stays a few chunks whatever its size


@dataclass(frozen=True)
class Progress:
    """What a waiting job learns while its prompt runs."""
    prompt_id: str
    percent: float
    node: str | None
    step: int | None = None
    steps: int | None = None


ProgressCallback = Callable[[Progress], Awaitable[None] | None]


class _Crashed(Exception):
    """ComfyUI refused a connection: it is down or restarting, and its queue is gone."""


class ComfyClient:
    def __init__(self, base_url: str, *, request_timeout: float = 30.0,
                 idle_check_interval: float = 5.0, down_check_interval: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.client_id = uuid.uuid4().hex
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=5)
        self._idle_check = idle_check_interval
        self._down_check = down_check_interval
        self._session: aiohttp.ClientSession | None = None
        self._reader: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self._epoch = 0  # bumped when the websocket connects or drops: ComfyUI may have restarted
        self._object_info: tuple[int, dict] | None = None
        self._waiters: dict[str, asyncio.Queue] = {}
        self._orphans: OrderedDict[str, list[dict]] = OrderedDict()

    # ---- plumbing -------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Loopback only, so no connection limit is needed beyond aiohttp's pool.
            self._session = aiohttp.ClientSession(timeout=self._request_timeout,
                                                  connector=aiohttp.TCPConnector(limit=256))
        return self._session

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._session:
            await self._session.close()
            self._session = None

    @contextlib.asynccontextmanager
    async def _request(self, method: str, path: str, **kwargs) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; a transport failure while it is open, reading the body included, becomes
        `_Crashed` (connection refused) or `comfy_unreachable`."""
        try:
            async with self._http().request(method, self.base_url + path, **kwargs) as resp:
                yield resp
        except aiohttp.ClientConnectorError as exc:
            raise _Crashed(str(exc)) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise AppError("comfy_unreachable", f"{method} {path}: {type(exc).__name__}") from None

    async def _call(self, method: str, path: str, *, expect_json: bool = True, **kwargs) -> Any:
        async with self._request(method, path, **kwargs) as resp:
            body = await resp.read()
        if resp.status >= 400:
            return _HttpFailure(resp.status, body)
        if not expect_json:
            return body
        try:
            return json.loads(body) if body else None
        except json.JSONDecodeError:
            raise AppError("comfy_protocol_error", f"{method} {path} answered non-JSON") from None

    async def _reach(self, method: str, path: str, **kwargs) -> Any:
        """`_call` for requests made outside a running prompt: a refused connection only means
        ComfyUI is not there (`_poll` alone reads it as a crash)."""
        try:
            return await self._call(method, path, **kwargs)
        except _Crashed as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: _Crashed) -> AppError:
        return AppError("comfy_unreachable", f"no ComfyUI at {self.base_url} ({exc})")

    async def _checked(self, method: str, path: str, **kwargs) -> Any:
        result = await self._reach(method, path, **kwargs)
        if isinstance(result, _HttpFailure):
            raise AppError("comfy_protocol_error", f"{method} {path} answered HTTP {result.status}")
        return result

    # ---- small routes ---------------------------------------------------------------
    async def system_stats(self) -> dict:
        return await self._checked("GET", "/system_stats")

    async def object_info(self, node_class: str | None = None) -> dict:
        return await self._checked("GET", "/object_info" + (f"/{node_class}" if node_class else ""))

    async def object_info_once(self) -> dict:
        """The full /object_info, fetched once per ComfyUI start (it is large, and ComfyUI lists
        folders to build it). A restart drops the websocket, so the copy is trusted only while the
        same connection stays up; without one it is fetched every time."""
        self._ensure_reader()
        await at_most(2.0, self._connected.wait())
        epoch = self._epoch
        if self._object_info is not None and self._object_info[0] == epoch and self._connected.is_set():
            return self._object_info[1]
        info = await self.object_info()
        if self._connected.is_set() and self._epoch == epoch:
            self._object_info = (epoch, info)
        return info

    async def queue(self) -> dict:
        return await self._checked("GET", "/queue")

    async def history(self, prompt_id: str) -> dict | None:
        data = await self._checked("GET", f"/history/{prompt_id}")
        return (data or {}).get(prompt_id)

    async def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else None
        await self._checked("POST", "/interrupt", json=body, expect_json=False)

    async def delete_pending(self, prompt_id: str) -> None:
        await self._checked("POST", "/queue", json={"delete": [prompt_id]}, expect_json=False)

    async def delete_history(self, prompt_id: str) -> None:
        await self._checked("POST", "/history", json={"delete": [prompt_id]}, expect_json=False)

    async def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        await self._checked("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory},
                            expect_json=False)

    async def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """A whole output in memory: for small files only; see `view_to_file`."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        result = await self._reach("GET", "/view", params=params, expect_json=False)
        if isinstance(result, _HttpFailure):
            raise AppError("output_fetch_failed", f"/view answered HTTP {result.status}", suffix=filename)
        return result

    async def view_to_file(self, path: Path, *, filename: str, subfolder: str = "", type: str = "output",
                           max_bytes: int | None = None) -> tuple[int, str]:
        """Stream an output from `/view` into `path` (a new file, mode 0600) and return its size
        and sha256 hex: memory stays a few MiB however large the file (a video can be GBs).

        Errors are `view`'s (`output_fetch_failed:<filename>`, `comfy_unreachable`, also when
        ComfyUI dies mid-file), plus `output_too_large:<filename>` past `max_bytes`, found from
        Content-Length before any byte is read or else as soon as the count passes it. On any
        failure or cancellation the partial file is removed; an existing `path` is never
        replaced (FileExistsError)."""
        params = {"filename": filename, "subfolder": subfolder, "type": type}
        # A large file takes longer than the request timeout to arrive: only silence counts.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self._request_timeout.total)
        spool = _Spool(Path(path))
        try:
            # identity: the bytes counted against max_bytes are the file's, not a compressed form.
            async with self._request("GET", "/view", params=params, timeout=timeout, read_bufsize=_VIEW_CHUNK,
                                     headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status >= 400:
                    raise AppError("output_fetch_failed", f"/view answered HTTP {resp.status}", suffix=filename)
                _check_size(resp.content_length or 0, max_bytes, filename)
                await _copy(resp.content, spool, max_bytes, filename)
            spool.close()
        except BaseException as exc:
            spool.discard()
            if isinstance(exc, _Crashed):
                raise self._unreachable(exc) from None
            raise
        return spool.size, spool.digest.hexdigest()

    async def upload_image(self, data: bytes, filename: str, *, subfolder: str = "",
                           overwrite: bool = True, type: str = "input") -> dict:
        form = aiohttp.FormData()
        form.add_field("image", data, filename=filename, content_type="application/octet-stream")
        form.add_field("overwrite", "true" if overwrite else "false")
        form.add_field("type", type)
        form.add_field("subfolder", subfolder)
        return await self._checked("POST", "/upload/image", data=form)

    async def ping(self, timeout: float | None = None) -> bool:
        """True when ComfyUI answers its cheapest route (within `timeout`, default the request timeout)."""
        extra = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}
        try:
            result = await self._call("GET", "/prompt", **extra)
        except (_Crashed, AppError):
            return False
        return not isinstance(result, _HttpFailure)

    # ---- websocket hub --------------------------------------------------------------
    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def _read_forever(self) -> None:
        delay = 0.05
        url = f"{self.base_url}/ws?clientId={self.client_id}"
        while True:
            try:
                async with self._http().ws_connect(url, heartbeat=20, max_msg_size=0) as ws:
                    delay = 0.05
                    self._epoch += 1
                    self._connected.set()
                    self._broadcast(_CONNECTED)
                    async for frame in ws:
                        if frame.type == aiohttp.WSMsgType.TEXT:
                            self._dispatch(frame.data)
                        elif frame.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                            break
                        # binary frames are previews: not results, ignored
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.debug("ws_connect_failed", error=type(exc).__name__)
            if self._connected.is_set():
                self._epoch += 1
                self._connected.clear()
                self._broadcast(_DISCONNECTED)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _dispatch(self, raw: str) -> None:
        try:
            message = json.loads(raw)
            prompt_id = message["data"].get("prompt_id")
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if not prompt_id:
            return  # queue `status` broadcasts
        waiter = self._waiters.get(prompt_id)
        if waiter is not None:
            waiter.put_nowait(message)
            return
        events = self._orphans.setdefault(prompt_id, [])
        if len(events) < _BUFFER_EVENTS or message.get("type") == "executing":
            events.append(message)
        while len(self._orphans) > _BUFFER_PROMPTS:
            self._orphans.popitem(last=False)

    def _broadcast(self, marker: dict) -> None:
        for waiter in self._waiters.values():
            waiter.put_nowait(marker)

    def _subscribe(self, prompt_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        for message in self._orphans.pop(prompt_id, []):
            queue.put_nowait(message)
        self._waiters[prompt_id] = queue
        return queue

    # ---- running a prompt -----------------------------------------------------------
    async def submit(self, prompt: dict[str, Any]) -> str:
        """Queue a prompt; a validation failure keeps ComfyUI's own `node_errors`."""
        self._ensure_reader()
        # Wait briefly for the socket so the first events are not left to polling.
        await at_most(2.0, self._connected.wait())
        body = {"prompt": prompt, "client_id": self.client_id}
        result = await self._reach("POST", "/prompt", json=body)
        if isinstance(result, _HttpFailure):
            raise _rejection(result)
        if not isinstance(result, dict) or not isinstance(result.get("prompt_id"), str):
            raise AppError("comfy_protocol_error", "POST /prompt answered without a prompt_id")
        return result["prompt_id"]

    async def wait(self, prompt_id: str, *, prompt: dict[str, Any] | None = None,
                   on_progress: ProgressCallback | None = None, adopted: bool = False,
                   stall_timeout: float | None = None) -> PromptOutcome:
        """Follow a submitted prompt to its end. Cancel the awaiting task to give up on it
        (the caller interrupts ComfyUI; see `cancel`).

        `adopted`: the prompt was submitted by another process (a worker that died), so its
        events go to a socket that no longer exists; check its state at once and poll often.
        Such a prompt shows no sign of life while it runs, so it gets no stall watchdog.
        `stall_timeout`: seconds without a sign of life before `comfy_stalled` (None/0: never).
        """
        watch = stall_timeout if stall_timeout and not adopted else None
        try:
            async with asyncio.timeout(None) as watchdog:
                return await self._follow(prompt_id, prompt, on_progress, adopted, watchdog, watch)
        except TimeoutError:
            if not watchdog.expired():
                raise  # the caller's own timeout
            log.warning("comfy_stalled", prompt_id=prompt_id, seconds=watch)
            raise AppError("comfy_stalled", f"the prompt showed no sign of life for {watch:g} s",
                           extra={"prompt_id": prompt_id}) from None

    async def _follow(self, prompt_id: str, prompt: dict[str, Any] | None, on_progress: ProgressCallback | None,
                      adopted: bool, watchdog: asyncio.Timeout, watch: float | None) -> PromptOutcome:
        loop = asyncio.get_running_loop()

        def alive() -> None:
            if watch is not None:
                watchdog.reschedule(loop.time() + watch)

        alive()
        self._ensure_reader()
        queue = self._subscribe(prompt_id)
        tracker = _ProgressTracker(prompt_id, prompt or {})
        check_now = adopted
        try:
            while True:
                if check_now:
                    message, check_now = None, False
                else:
                    interval = (self._down_check if adopted or not self._connected.is_set()
                                else self._idle_check)
                    if watch is not None:
                        interval = min(interval, watch / 3)  # a queued prompt must be seen waiting in time
                    message = await at_most(interval, queue.get())
                if message is None or message is _DISCONNECTED or message is _CONNECTED:
                    entry = await self._poll(prompt_id)
                    if entry is _PENDING:
                        alive()  # waiting behind other prompts is not stalling
                    elif entry is not _RUNNING:
                        return self._finish(prompt_id, entry)
                    continue
                alive()
                kind, data = message.get("type"), message.get("data") or {}
                if kind == "executing" and data.get("node") is None:
                    entry = await self.history(prompt_id)
                    if entry is None:
                        raise AppError("comfy_protocol_error", f"prompt {prompt_id} ended without history")
                    return self._finish(prompt_id, entry)
                update = tracker.feed(kind, data)
                if update is not None and on_progress is not None:
                    result = on_progress(update)
                    if asyncio.iscoroutine(result):
                        await result
        finally:
            self._waiters.pop(prompt_id, None)

    async def _poll(self, prompt_id: str) -> dict | str:
        """History entry when done; _PENDING or _RUNNING while in the queue (_RUNNING also when
        ComfyUI cannot tell); raises if ComfyUI lost it."""
        try:
            queue = await self._call("GET", "/queue")
            if isinstance(queue, dict):
                for lane, where in (("queue_running", _RUNNING), ("queue_pending", _PENDING)):
                    if any(_queue_item_id(item) == prompt_id for item in queue.get(lane) or []):
                        return where
            # Checked after the queue: ComfyUI moves a prompt into history under the same lock
            # that removes it from the queue, so a prompt missing from both is truly gone.
            history = await self._call("GET", f"/history/{prompt_id}")
        except _Crashed:
            raise AppError("comfy_crashed", "ComfyUI stopped answering while the prompt ran",
                           extra={"prompt_id": prompt_id}) from None
        except AppError as exc:
            log.warning("comfy_poll_failed", prompt_id=prompt_id, error=exc.code)
            return _RUNNING
        if isinstance(history, dict) and prompt_id in history:
            return history[prompt_id]
        if isinstance(history, _HttpFailure) or isinstance(queue, _HttpFailure):
            return _RUNNING
        raise AppError("comfy_crashed", "ComfyUI restarted and lost the prompt",
                       extra={"prompt_id": prompt_id})

    @staticmethod
    def _finish(prompt_id: str, entry: dict) -> PromptOutcome:
        raise_for_failure(prompt_id, entry)
        return collect_outputs(prompt_id, entry)

    async def cancel(self, prompt_id: str) -> None:
        """Stop a prompt whether it is pending or running; best effort when ComfyUI is gone."""
        for action in (self.delete_pending, self.interrupt):
            try:
                await action(prompt_id)
            except AppError as exc:
                log.warning("comfy_cancel_failed", prompt_id=prompt_id, error=exc.code)


@dataclass(frozen=True)
class _HttpFailure:
    status: int
    body: bytes


class _Spool:
    """The file `view_to_file` writes, hashed as it is written. Writes run in a worker thread
    (a slow disk must not stall the event loop); the lock makes `discard` wait for a write in
    flight, so the descriptor is never closed under it (nor its number reused by another file)."""

    def __init__(self, path: Path):
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd: int | None = os.open(path, flags, 0o600)
        self._lock = threading.Lock()
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        with self._lock:
            if self._fd is None:
                return  # discarded while this write waited for a thread
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view):]
            self.digest.update(chunk)
            self.size += len(chunk)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


async def _copy(stream: aiohttp.StreamReader, spool: _Spool, max_bytes: int | None, filename: str) -> None:
    """Read the next chunk while the previous one is written: one write in flight at a time,
    so chunks land (and are hashed) in order and memory holds at most two of them."""
    loop = asyncio.get_running_loop()
    writing: asyncio.Future | None = None
    received = 0
    try:
        async for chunk in stream.iter_chunked(_VIEW_CHUNK):
            received += len(chunk)
            _check_size(received, max_bytes, filename)
            if writing is not None:
                await writing
            writing = loop.run_in_executor(None, spool.write, chunk)
        if writing is not None:
            await writing
            writing = None
    finally:
        if writing is not None and not writing.done():
            # Failing or cancelled: the thread keeps its chunk until the write ends; `discard`
            # then waits on the lock. The future's outcome no longer matters.
            writing.add_done_callback(lambda f: f.cancelled() or f.exception())


def _check_size(size: int, max_bytes: int | None, filename: str) -> None:
    if max_bytes is not None and size > max_bytes:
        raise AppError("output_too_large", f"the output is larger than {max_bytes} bytes", suffix=filename,
                       extra={"max_bytes": max_bytes})


def _queue_item_id(item: Any) -> str | None:
    return item[1] if isinstance(item, list) and len(item) > 1 else None


def _rejection(failure: _HttpFailure) -> AppError:
    try:
        body = json.loads(failure.body)
    except ValueError:
        return AppError("comfy_protocol_error", f"POST /prompt answered HTTP {failure.status}")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return AppError("comfy_protocol_error", f"POST /prompt answered HTTP {failure.status}")
    node_errors = body.get("node_errors") or {}
    detail = str(error.get("message") or "ComfyUI refused the workflow")
    if error.get("details"):
        detail += f": {error['details']}"
    first = _first_node_error(node_errors)
    if first:
        detail += f" ({first})"
    return AppError("workflow_rejected", detail, suffix=str(error.get("type") or "invalid_prompt"),
                    extra={"node_errors": node_errors})


def _first_node_error(node_errors: Any) -> str:
    if not isinstance(node_errors, dict):
        return ""
    for node_id, info in node_errors.items():
        for err in (info or {}).get("errors") or []:
            return f"node {node_id} {info.get('class_type', '')}: {err.get('message')}: {err.get('details')}"
    return ""


class _ProgressTracker:
    """Turns ComfyUI's node and step events into one overall percentage."""

    def __init__(self, prompt_id: str, prompt: dict[str, Any]):
        self.prompt_id = prompt_id
        self.total = max(len(prompt), 1)
        self.done: set[str] = set()
        self.current: str | None = None

    def _percent(self, fraction: float = 0.0) -> float:
        return round(min(100.0, 100.0 * (len(self.done) + fraction) / self.total), 1)

    def feed(self, kind: str, data: dict[str, Any]) -> Progress | None:
        if kind == "execution_cached":
            self.done.update(str(n) for n in data.get("nodes") or [])
            return Progress(self.prompt_id, self._percent(), None)
        if kind == "executing":
            if self.current:
                self.done.add(self.current)
            self.current = str(data.get("node"))
            return Progress(self.prompt_id, self._percent(), self.current)
        if kind == "progress":
            value, maximum = data.get("value") or 0, data.get("max") or 0
            fraction = value / maximum if maximum else 0.0
            return Progress(self.prompt_id, self._percent(fraction), str(data.get("node")), value, maximum)
        return None
