"""Start the stand-in: `python -m tests.comfy_standin --listen 127.0.0.1 --port N --output-directory DIR`.

Prints ComfyUI's startup lines (ending with `To see the GUI go to: http://HOST:PORT` once
the port is bound), exits 1 with an "address already in use" error if it is taken, and
exits 0 on SIGTERM or SIGINT. See config.py for the flags.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import time

from aiohttp import web

from .config import Config, parse_args
from .executor import Worker
from .registry import NODE_TYPES
from .server import ComfyServer, SocketHub
from .system_info import COMFYUI_VERSION

log = logging.getLogger("comfy_standin")


def main(argv: list[str] | None = None) -> int:
    # Until the server installs its own handlers, a stop request simply ends the process cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(stream=sys.stdout, level=config.log_level, format="%(message)s")
    if config.ignored_args:
        log.warning("WARNING: comfy stand-in ignores unknown arguments: %s", " ".join(config.ignored_args))
    _prepare_directories(config)
    log.info("Python version: %s", sys.version)
    log.info("ComfyUI version: %s (test stand-in, no models are loaded)", COMFYUI_VERSION)
    log.info("Device: cpu")
    if config.startup_delay > 0:
        time.sleep(config.startup_delay)
    _log_custom_node_import_times(config.paths.custom_nodes)
    try:
        asyncio.run(_serve(config))
    except OSError as error:
        log.error("%s", error)
        return 1
    return 0


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def _log_custom_node_import_times(folder: str) -> None:
    """ComfyUI's "Import times for custom nodes:" block (nodes.py init_external_custom_nodes),
    in its format, for what lies in `custom_nodes/`: the stand-in imports none of it, so each
    entry took the time it took to look at it. Like ComfyUI, nothing when there is no entry."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    import_times = []
    for name in names:
        path = os.path.join(folder, name)
        if name == "__pycache__" or name.endswith(".disabled") or (os.path.isfile(path) and not name.endswith(".py")):
            continue
        started = time.perf_counter()
        os.stat(path)
        import_times.append((time.perf_counter() - started, path))
    if import_times:
        log.info("\nImport times for custom nodes:")
        for seconds, path in sorted(import_times):
            log.info("{:6.1f} seconds: {}".format(seconds, path))
        log.info("")


def _prepare_directories(config: Config) -> None:
    paths = config.paths
    # ComfyUI empties its temp folder on every start.
    shutil.rmtree(paths.temp, ignore_errors=True)
    for folder in (paths.output, paths.input, paths.temp):
        os.makedirs(folder, exist_ok=True)


async def _serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    hub = SocketHub(loop)
    server = ComfyServer(config, NODE_TYPES, hub)
    # access_log=None: ComfyUI does not log requests.
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        for host in config.listen:
            await web.TCPSite(runner, host, config.port).start()
            shown = f"[{host}]" if ":" in host else host
            log.info("Starting server\n")
            log.info("To see the GUI go to: http://%s:%s", shown, config.port)
        publisher = asyncio.create_task(hub.publish_forever())
        Worker(server.queue, server.executor, hub).start()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("\nStopped server")
        publisher.cancel()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
