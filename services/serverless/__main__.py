"""`python -m services.serverless [runpod flags]`: the RunPod Serverless worker (the seeds'
`rp_handler.serverless`). Without flags it runs RunPod's production worker loop; with
`--rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port N` the SDK's local test API.

The runpod SDK is imported here only (it costs about 2 s): the Pod API never pays for it.
"""
from __future__ import annotations

import asyncio
import os

from services import config, logs
from services.serverless.signals import ShutdownSignals
from services.serverless.worker import Worker
from services.startup_ledger import Ledger


def main() -> None:
    startup = Ledger("serverless")  # in memory: reported with the first job (worker.handle)
    settings = config.load_or_exit()
    logs.configure_from(settings)
    startup.mark("settings_loaded")
    worker = Worker(settings, startup=startup)
    signals = ShutdownSignals(worker)  # SIGTERM and SIGINT: see services/serverless/signals.py
    signals.install()
    try:
        worker.warm_up()  # ComfyUI starts while the SDK below is still importing
        _serve(worker, settings, signals)
    finally:
        signals.hold()
        # Here, not at exit (atexit): once the interpreter winds down no thread can be started,
        # and stopping ComfyUI needs one.
        worker.shutdown()


def _serve(worker: Worker, settings, signals: ShutdownSignals) -> None:
    # The SDK reads its level from the environment at import; DEBUG would log job outputs.
    os.environ["RUNPOD_DEBUG_LEVEL"] = settings.runpod_debug_level.upper()
    import runpod

    if settings.runpod_webhook_post_output:
        worker.send_progress = runpod.serverless.progress_update

    async def handler(job):
        signals.adopt_sdk_handlers()  # the SDK's loop runs, its signal handlers are in place
        future = worker.submit(worker.handle(job))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # a RunPod cancel or timeout: the runner interrupts ComfyUI
            raise

    runpod.serverless.start({"handler": handler, "return_aggregate_stream": False})


if __name__ == "__main__":
    main()
